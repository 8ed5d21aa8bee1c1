"""Many trainings, several workers on PostgreSQL: each submitted exactly once, all finish."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from avatar_api.db import session_scope
from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.worker import Worker
from avatar_api.models import Photo, SimulatedRequest, Training, TrainingStatus
from avatar_api.training.reconciler import run_reconciler
from avatar_api.training.state import TERMINAL
from tests.live import json_of, live_stack
from tests.training.test_e2e import avatar_with_photos, live_settings

TRAININGS = 24
WORKERS = 4


async def test_many_trainings_on_several_workers(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL (SQLite runs one in-process worker)")
    settings = live_settings(
        database_url,
        tmp_path,
        simulator_queue_seconds=0.1,
        simulator_train_seconds=0.2,
        quota_concurrent_trainings=TRAININGS,
        quota_trainings_per_day=TRAININGS,
        rate_limit_per_minute=0,
    )
    async with live_stack(settings) as stack:
        services = stack.app.state.services
        template = uuid.UUID(await avatar_with_photos(stack))
        async with session_scope(services.sessionmaker) as session:
            photos = (await session.exec(select(Photo).where(Photo.avatar_id == template))).all()
        avatar_ids = [str(template)]
        for _ in range(TRAININGS - 1):
            avatar = await json_of(
                await stack.client.post(
                    "/v1/avatars", json={"name": "A", "training_type": "portrait"}
                ),
                201,
            )
            avatar_ids.append(avatar["id"])
            async with session_scope(services.sessionmaker) as session:
                # The same stored photos, recorded again: uploading 240 photos would only
                # slow the test down without testing anything more.
                for photo in photos:
                    clone = photo.model_copy(
                        update={"id": uuid.uuid4(), "avatar_id": uuid.UUID(avatar["id"])}
                    )
                    session.add(Photo.model_validate(clone.model_dump()))
        for avatar_id in avatar_ids:
            await json_of(
                await stack.client.post(
                    f"/v1/avatars/{avatar_id}/training", json={"preset": "fast"}
                ),
                202,
            )

        workers = [
            Worker(services=services, registry=build_registry(), concurrency=4, poll_interval=0.05)
            for _ in range(WORKERS)
        ]
        tasks = [asyncio.create_task(w.run(stack.stop)) for w in workers]
        tasks += [asyncio.create_task(run_reconciler(services, stack.stop)) for _ in range(2)]

        async def all_terminal() -> bool:
            async with session_scope(services.sessionmaker) as session:
                open_count = (
                    await session.exec(
                        select(func.count())
                        .select_from(Training)
                        .where(col(Training.status).not_in(list(TERMINAL)))
                    )
                ).one()
            return int(open_count) == 0

        try:
            await stack.wait_for(all_terminal, seconds=90)
        finally:
            stack.stop.set()
            await asyncio.gather(*tasks)

        async with session_scope(services.sessionmaker) as session:
            trainings = (await session.exec(select(Training))).all()
            requests = (await session.exec(select(SimulatedRequest))).all()
        assert len(trainings) == TRAININGS
        assert {t.status for t in trainings} == {TrainingStatus.completed}
        # Exactly one submission per training: one simulated request each, all distinct.
        assert len(requests) == TRAININGS
        assert {t.request_id for t in trainings} == {r.request_id for r in requests}
