"""Deletion reaches storage (a real S3 server) and the provider, and only the right user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from avatar_api.db import utcnow
from avatar_api.models import Job, JobStatus, SimulatedRequest
from avatar_api.settings import Settings
from tests.conftest import make_settings
from tests.live import LiveStack, json_of, live_stack
from tests.photos.portraits import portrait_jpegs
from tests.s3server import S3Server, s3_server  # noqa: F401


def s3_settings(database_url: str, server: S3Server, bucket: str) -> Settings:
    return make_settings(
        database_url=database_url,
        storage_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=server.endpoint_url,
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
        s3_region=server.region,
        simulator_queue_seconds=0.2,
        simulator_train_seconds=0.3,
        training_reconcile_interval_seconds=0.2,
        job_poll_interval_seconds=0.05,
    )


@pytest.fixture
async def s3_stack(
    database_url: str,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[LiveStack]:
    bucket = f"del-{tmp_path.name[-20:].lower().replace('_', '-')}"
    client = s3_server.client()
    await asyncio.to_thread(client.create_bucket, Bucket=bucket)
    try:
        async with live_stack(s3_settings(database_url, s3_server, bucket)) as stack:
            yield stack
    finally:
        client.close()


def keys(server: S3Server, bucket: str) -> set[str]:
    client = server.client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    finally:
        client.close()


async def make_avatar(client: httpx.AsyncClient, user: str, photos: int = 10) -> str:
    avatar = await json_of(
        await client.post(
            "/v1/avatars",
            json={"name": user, "training_type": "portrait", "external_user_id": user},
        ),
        201,
    )
    files = [("files", (f"p{i}.jpg", portrait_jpegs(24)[i], "image/jpeg")) for i in range(photos)]
    body = await json_of(await client.post(f"/v1/avatars/{avatar['id']}/photos", files=files), 201)
    assert len(body["accepted"]) == photos
    avatar_id: str = avatar["id"]
    return avatar_id


async def train(stack: LiveStack, client: httpx.AsyncClient, avatar_id: str) -> dict[str, Any]:
    await json_of(await client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202)
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        latest = await json_of(await client.get(f"/v1/avatars/{avatar_id}/training"), 200)
        return latest["status"] in {"completed", "failed"}

    await stack.wait_for(done)
    return latest


async def jobs_settled(stack: LiveStack) -> bool:
    """No job is due or running (jobs scheduled for later, like a slow simulation, wait)."""
    async with stack.engine.connect() as conn:
        busy = (
            await conn.execute(
                select(func.count())
                .select_from(Job)
                .where(
                    col(Job.status).in_([JobStatus.pending, JobStatus.running]),
                    col(Job.run_at) <= utcnow(),
                )
            )
        ).scalar_one()
    return int(busy) == 0


async def test_deleting_a_user_erases_everything_of_that_user_only(
    s3_stack: LiveStack,
    s3_server: S3Server,  # noqa: F811
) -> None:
    stack, bucket = s3_stack, s3_stack.settings.s3_bucket
    alice = stack.client
    bob = await stack.client_for("other-tenant")
    doomed = [await make_avatar(alice, "tg:1"), await make_avatar(alice, "tg:1", photos=2)]
    kept_same_tenant = await make_avatar(alice, "tg:2", photos=2)
    kept_other_tenant = await make_avatar(bob, "tg:1", photos=2)  # same external id, other tenant

    stack.start_worker()
    trained = await train(stack, alice, doomed[0])
    assert trained["status"] == "completed"
    await stack.wait_for(lambda: jobs_settled(stack))
    before = keys(s3_server, bucket)
    request_id = trained["request_id"]
    assert any(k.startswith(f"simulator/{request_id}/") for k in before)
    assert any("/archives/" in k for k in before)

    response = await alice.delete("/v1/users/tg:1")
    receipt = await json_of(response, 200)
    assert [r["avatar_id"] for r in receipt["avatars"]] == doomed
    first = receipt["avatars"][0]
    assert first["database"] == {"avatars": 1, "photos": 10, "trainings": 1, "generations": 0}
    assert first["storage_objects_deleted"] >= 11  # 10 photos + the archive (+ result copies)
    assert first["provider"] == [
        {
            "request_id": request_id,
            "endpoint": "fal-ai/flux-lora-portrait-trainer",
            "cancel_requested": False,
            "payload_deletion": "queued",
        }
    ]
    await stack.wait_for(lambda: jobs_settled(stack))

    after = keys(s3_server, bucket)
    for avatar_id in doomed:
        assert not [k for k in after if f"/avatars/{avatar_id}/" in k]
        assert (await alice.get(f"/v1/avatars/{avatar_id}")).status_code == 404
    assert not [k for k in after if k.startswith(f"simulator/{request_id}/")]
    for client, avatar_id in ((alice, kept_same_tenant), (bob, kept_other_tenant)):
        assert len([k for k in after if f"/avatars/{avatar_id}/photos/" in k]) == 2
        listed = await json_of(await client.get(f"/v1/avatars/{avatar_id}/photos"), 200)
        assert listed["photo_count"] == 2
    async with stack.engine.connect() as conn:
        row = (await conn.execute(select(SimulatedRequest))).one()
    assert row.arguments == {}  # fal (the simulator) was asked to drop its payloads


async def test_deleting_a_running_training_cancels_it_at_the_provider(
    s3_stack: LiveStack,
) -> None:
    stack = s3_stack
    stack.settings.simulator_train_seconds = 30.0
    avatar_id = await make_avatar(stack.client, "tg:9")
    await json_of(await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202)
    stack.start_worker()

    async def submitted() -> bool:
        training = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}/training"), 200)
        return training["request_id"] is not None

    await stack.wait_for(submitted)
    receipt = await json_of(await stack.client.delete(f"/v1/avatars/{avatar_id}"), 200)
    assert receipt["provider"][0]["cancel_requested"] is True
    await stack.wait_for(lambda: jobs_settled(stack))
    async with stack.engine.connect() as conn:
        row = (await conn.execute(select(SimulatedRequest))).one()
    assert row.cancelled_at is not None


async def test_a_user_erasure_that_fails_part_way_is_finished_by_asking_again(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(database_url=database_url, storage_local_root=tmp_path / "storage")
    async with live_stack(settings) as stack:
        first = await make_avatar(stack.client, "tg:7", photos=1)
        second = await make_avatar(stack.client, "tg:7", photos=1)
        storage = stack.app.state.services.storage
        real_delete_prefix = storage.delete_prefix

        async def storage_down_for_second(prefix: str) -> int:
            if second in prefix:
                raise OSError("storage unavailable")
            count: int = await real_delete_prefix(prefix)
            return count

        monkeypatch.setattr(storage, "delete_prefix", storage_down_for_second)
        stopped = await stack.client.delete("/v1/users/tg:7")
        problem = await json_of(stopped, 503)
        assert problem["code"] == "user_erasure_incomplete"
        assert stopped.headers["Retry-After"] == "5"
        # The receipt of what is gone, which asking again will not repeat.
        assert [r["avatar_id"] for r in problem["erased"]] == [first]
        assert problem["erased"][0]["storage_objects_deleted"] == 1
        # Each avatar is its own transaction: the first is erased, the second still whole.
        assert (await stack.client.get(f"/v1/avatars/{first}")).status_code == 404
        photos = await json_of(await stack.client.get(f"/v1/avatars/{second}/photos"), 200)
        assert photos["photo_count"] == 1

        monkeypatch.undo()
        receipt = await json_of(await stack.client.delete("/v1/users/tg:7"), 200)
        assert [r["avatar_id"] for r in receipt["avatars"]] == [second]
        assert receipt["avatars"][0]["storage_objects_deleted"] == 1
        assert (await stack.client.get(f"/v1/avatars/{second}")).status_code == 404
