from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from avatar_api.db import session_scope, utcnow
from avatar_api.models import Avatar, AvatarStatus, Photo, Training, TrainingStatus
from avatar_api.storage_keys import archive_key
from avatar_api.training.retention import apply_retention
from tests.conftest import make_settings
from tests.live import json_of, live_stack
from tests.photos.portraits import portrait_jpegs


async def test_photos_and_archives_expire_after_the_training(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=database_url,
        storage_local_root=tmp_path / "storage",
        retention_photo_days=7,
    )
    async with live_stack(settings) as stack:
        services = stack.app.state.services
        ids = []
        for age_days in (8, 6):
            avatar = await json_of(
                await stack.client.post(
                    "/v1/avatars", json={"name": "A", "training_type": "style"}
                ),
                201,
            )
            files = [
                ("files", (f"p{i}.jpg", portrait_jpegs(24)[i], "image/jpeg")) for i in range(2)
            ]
            await json_of(
                await stack.client.post(f"/v1/avatars/{avatar['id']}/photos", files=files), 201
            )
            avatar_id = uuid.UUID(avatar["id"])
            async with session_scope(services.sessionmaker) as session:
                row = await session.get(Avatar, avatar_id)
                assert row is not None
                row.status = AvatarStatus.completed
                training = Training(
                    tenant_id=row.tenant_id,
                    avatar_id=avatar_id,
                    attempt=1,
                    status=TrainingStatus.completed,
                    endpoint="fal-ai/flux-pro-trainer",
                    test_mode=True,
                    completed_at=utcnow() - timedelta(days=age_days),
                )
                training.archive_key = archive_key(row.tenant_id, avatar_id, training.id)
                session.add_all([row, training])
            await services.storage.put_bytes(training.archive_key, b"PK", content_type="x")
            ids.append((avatar_id, training.archive_key))

        assert await apply_retention(services) == 1
        assert await apply_retention(services) == 0  # nothing left to do for the old one

        (old, old_archive), (recent, recent_archive) = ids
        async with session_scope(services.sessionmaker) as session:
            old_photos = (await session.exec(select(Photo).where(Photo.avatar_id == old))).all()
            recent_photos = (
                await session.exec(select(Photo).where(Photo.avatar_id == recent))
            ).all()
            old_training = (
                await session.exec(select(Training).where(Training.avatar_id == old))
            ).one()
        assert old_photos == []
        assert len(recent_photos) == 2
        assert old_training.archive_key is None
        assert not await services.storage.exists(old_archive)
        assert await services.storage.exists(recent_archive)
        for photo in recent_photos:
            assert await services.storage.exists(photo.storage_key)
        listed = await json_of(await stack.client.get(f"/v1/avatars/{old}/photos"), 200)
        assert listed["photo_count"] == 0
