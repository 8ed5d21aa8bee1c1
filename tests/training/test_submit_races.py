"""What happens when the caller cancels or erases while a submission is under way."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.gateway import Submission
from avatar_api.fal.simulator import SIMULATOR_USER_ID, simulator_signer
from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.worker import Worker
from avatar_api.models import Job, Training, TrainingStatus
from avatar_api.storage_keys import archive_key
from avatar_api.training.tokens import webhook_url
from tests.fakes import RecordingGateway
from tests.live import LiveStack, json_of, live_stack
from tests.training.test_e2e import avatar_with_photos, live_settings


async def run_jobs(stack: LiveStack) -> None:
    worker = Worker(services=stack.app.state.services, registry=build_registry(), concurrency=1)
    while await worker.run_once():
        pass


async def jobs_of(stack: LiveStack, kind: str) -> list[Job]:
    async with session_scope(stack.app.state.sessionmaker) as session:
        return list((await session.exec(select(Job).where(Job.kind == kind))).all())


async def test_cancel_while_the_archive_is_built_leaves_nothing(
    database_url: str, tmp_path: Path
) -> None:
    gateway = RecordingGateway()
    async with live_stack(live_settings(database_url, tmp_path), gateway=gateway) as stack:
        avatar_id = await avatar_with_photos(stack)
        training = await json_of(
            await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202
        )
        storage = stack.app.state.services.storage
        original_put = storage.put_stream

        async def put_then_cancel(key: str, chunks: Any, **options: Any) -> Any:
            stored = await original_put(key, chunks, **options)
            await json_of(await stack.client.post(f"/v1/avatars/{avatar_id}/training/cancel"), 200)
            return stored

        storage.put_stream = put_then_cancel
        await run_jobs(stack)
        async with session_scope(stack.app.state.sessionmaker) as session:
            row = await session.get(Training, uuid.UUID(training["id"]))
        assert row is not None
        assert row.status is TrainingStatus.cancelled
        assert [name for name, _ in gateway.calls] == []
        assert not await storage.exists(archive_key(row.tenant_id, row.avatar_id, row.id))


class ErasingGateway(RecordingGateway):
    """fal accepts the request while the caller erases the avatar."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: LiveStack | None = None
        self.avatar_id = ""

    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        assert self.stack is not None
        await json_of(await self.stack.client.delete(f"/v1/avatars/{self.avatar_id}"), 200)
        return await super().submit(endpoint, arguments, webhook_url=webhook_url)


async def test_erase_while_fal_answers_stops_the_request_at_fal(
    database_url: str, tmp_path: Path
) -> None:
    gateway = ErasingGateway()
    async with live_stack(live_settings(database_url, tmp_path), gateway=gateway) as stack:
        gateway.stack = stack
        gateway.avatar_id = await avatar_with_photos(stack)
        await json_of(
            await stack.client.post(f"/v1/avatars/{gateway.avatar_id}/training", json={}), 202
        )
        await run_jobs(stack)
        submitted = [args for name, args in gateway.calls if name == "submit"]
        assert len(submitted) == 1
        assert ("cancel", "req-1") in gateway.calls
        assert ("delete_payloads", "req-1") in gateway.calls


async def test_a_late_webhook_stops_a_submission_given_up_as_lost(
    database_url: str, tmp_path: Path
) -> None:
    settings = live_settings(database_url, tmp_path)
    async with live_stack(settings, gateway=RecordingGateway()) as stack:
        avatar_id = await avatar_with_photos(stack)
        started = await json_of(
            await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202
        )
        training_id = uuid.UUID(started["id"])
        async with session_scope(stack.app.state.sessionmaker) as session:
            row = await session.get(Training, training_id)
            assert row is not None
            # As the reconciler leaves a submission whose reply never came.
            row.status = TrainingStatus.failed
            row.error_code = "submission_lost"
            row.submit_started_at = utcnow() - timedelta(hours=4)
            session.add(row)
            for job in (await session.exec(select(Job))).all():
                await session.delete(job)

        body = json.dumps(
            {"request_id": "late-1", "gateway_request_id": "late-1", "status": "OK", "payload": {}}
        ).encode()
        headers = simulator_signer(settings).sign(
            "late-1", SIMULATOR_USER_ID, body, int(time.time())
        )
        response = await stack.client.post(
            webhook_url(settings, training_id).removeprefix(settings.public_base_url),
            content=body,
            headers=headers,
        )
        assert response.status_code == 200, response.text
        cleanups = await jobs_of(stack, "fal.cleanup_request")
        assert [(j.payload["request_id"], j.payload["cancel"]) for j in cleanups] == [
            ("late-1", True)
        ]
        await run_jobs(stack)
        async with session_scope(stack.app.state.sessionmaker) as session:
            row = await session.get(Training, training_id)
            pending = (await session.exec(select(Job).where(col(Job.status) != "succeeded"))).all()
        assert row is not None
        assert row.status is TrainingStatus.failed  # a terminal status is never overwritten
        assert row.request_id == "late-1"
        assert pending == []
