"""Photos -> training -> completed, through the real app, job engine and simulator."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from avatar_api.models import Avatar, FalWebhookEvent, SimulatedRequest
from avatar_api.settings import Settings, SimulatorFailure
from avatar_api.trainers import Preset
from avatar_api.training.schemas import TrainingStart
from tests.conftest import make_settings
from tests.live import LiveStack, json_of, live_stack
from tests.photos.portraits import portrait_jpegs


def live_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_local_root": tmp_path / "storage",
        "simulator_queue_seconds": 0.3,
        "simulator_train_seconds": 0.6,
        "training_poll_interval_seconds": 1.0,
        "training_reconcile_interval_seconds": 0.2,
        "job_poll_interval_seconds": 0.05,
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[LiveStack]:
    async with live_stack(live_settings(database_url, tmp_path)) as stack:
        yield stack


async def avatar_with_photos(stack: LiveStack, count: int = 10) -> str:
    avatar = await json_of(
        await stack.client.post("/v1/avatars", json={"name": "Anna", "training_type": "portrait"}),
        201,
    )
    files = [("files", (f"p{i}.jpg", portrait_jpegs(24)[i], "image/jpeg")) for i in range(count)]
    uploaded = await json_of(
        await stack.client.post(f"/v1/avatars/{avatar['id']}/photos", files=files), 201
    )
    assert len(uploaded["accepted"]) == count
    avatar_id: str = avatar["id"]
    return avatar_id


async def wait_for_status(stack: LiveStack, avatar_id: str, *statuses: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        latest = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}/training"), 200)
        return latest["status"] in statuses

    await stack.wait_for(done)
    return latest


def parse_safetensors(data: bytes) -> dict[str, Any]:
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + length])
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            assert end - start == 4 * info["shape"][0] * info["shape"][1]
            assert 8 + length + end <= len(data)
    return header


async def count_events(stack: LiveStack) -> int:
    async with stack.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(FalWebhookEvent))).scalar_one()
        )


async def test_photos_to_completed_in_test_mode(stack: LiveStack) -> None:
    avatar_id = await avatar_with_photos(stack)
    started = await json_of(
        await stack.client.post(
            f"/v1/avatars/{avatar_id}/training",
            json={"preset": "fast"},
            headers={"Idempotency-Key": "start-1"},
        ),
        202,
    )
    assert started["status"] == "queued"
    assert started["test_mode"] is True
    assert started["parameters"]["steps"] == 300
    assert started["endpoint"] == "fal-ai/flux-lora-portrait-trainer"

    stack.start_worker()
    done = await wait_for_status(stack, avatar_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert done["request_id"]
    assert done["progress"]["percent"] == 100.0
    assert done["fal_input"]["images_data_url"].startswith("<archive tenants/")
    assert done["fal_input"]["trigger_phrase"].startswith("PERSON_")
    assert done["submitted_at"] <= done["completed_at"]
    assert done["result"]["kind"] == "lora"
    lora = await stack.client.get(done["result"]["lora_url"])
    assert lora.status_code == 200
    header = parse_safetensors(lora.content)
    assert header["__metadata__"]["format"] == "pt"
    assert done["result"]["lora_size"] == len(lora.content)

    avatar = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}"), 200)
    assert avatar["status"] == "completed"
    assert await count_events(stack) == 1

    # fal's CDN copy expires: ours is made right away and is what /lora hands out.
    lora_meta: dict[str, Any] = {}

    async def copied() -> bool:
        nonlocal lora_meta
        response = await stack.client.get(f"/v1/avatars/{avatar_id}/lora")
        if response.status_code == 409:
            assert response.json()["code"] == "lora_not_ready"
            return False
        lora_meta = await json_of(response, 200)
        return True

    await stack.wait_for(copied)
    assert "/results/" in lora_meta["download_url"]
    ours = await stack.client.get(lora_meta["download_url"])
    assert ours.content == lora.content
    assert lora_meta["size_bytes"] == len(lora.content)
    history = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}/trainings"), 200)
    assert [t["id"] for t in history["items"]] == [done["id"]]
    # The simulator checked the archive it downloaded: ten decodable photos.
    async with stack.engine.connect() as conn:
        row = (await conn.execute(select(SimulatedRequest))).one()
    assert row.error is None


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (SimulatorFailure.trainer_error, "failed"),
        (SimulatorFailure.lost_webhook, "completed"),
        (SimulatorFailure.duplicate_webhook, "completed"),
    ],
)
async def test_simulated_faults(
    database_url: str, tmp_path: Path, failure: SimulatorFailure, status: str
) -> None:
    settings = live_settings(database_url, tmp_path, simulator_failure=failure)
    async with live_stack(settings) as stack:
        avatar_id = await avatar_with_photos(stack)
        await json_of(await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202)
        stack.start_worker()
        done = await wait_for_status(stack, avatar_id, "completed", "failed")
        assert done["status"] == status, done
        if failure is SimulatorFailure.trainer_error:
            assert done["error_code"] == "fal_error"
            assert "Simulated trainer failure" in done["error_message"]
            assert done["result"] is None
        if failure is SimulatorFailure.lost_webhook:
            assert await count_events(stack) == 0  # completed by the reconciler's polling
        if failure is SimulatorFailure.duplicate_webhook:
            await stack.wait_for(lambda: _deliveries_done(stack))
            assert await count_events(stack) == 1


async def _deliveries_done(stack: LiveStack) -> bool:
    from avatar_api.models import Job, JobStatus

    async with stack.engine.connect() as conn:
        pending = (
            await conn.execute(
                select(func.count())
                .select_from(Job)
                .where(Job.kind == "simulator.webhook", Job.status != JobStatus.succeeded)
            )
        ).scalar_one()
        total = (
            await conn.execute(
                select(func.count()).select_from(Job).where(Job.kind == "simulator.webhook")
            )
        ).scalar_one()
    return bool(total == 2 and pending == 0)


async def test_cancel_is_final(stack: LiveStack) -> None:
    avatar_id = await avatar_with_photos(stack)
    await json_of(await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202)
    stack.start_worker()
    await wait_for_status(stack, avatar_id, "in_queue", "in_progress")
    cancelled = await json_of(
        await stack.client.post(f"/v1/avatars/{avatar_id}/training/cancel"), 200
    )
    assert cancelled["status"] == "cancelled"
    # Give the simulator time to finish had it not been cancelled: nothing revives it.
    await stack.wait_for(lambda: _cancelled_at_fal(stack))
    again = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}/training"), 200)
    assert again["status"] == "cancelled"
    avatar = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}"), 200)
    assert avatar["status"] == "cancelled"
    refused = await stack.client.post(f"/v1/avatars/{avatar_id}/training/cancel")
    assert refused.status_code == 409
    assert refused.json()["code"] == "training_not_cancellable"
    # A cancelled avatar can be trained again, as a new attempt.
    retry = await json_of(
        await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={}), 202
    )
    assert retry["attempt"] == 2


async def _cancelled_at_fal(stack: LiveStack) -> bool:
    async with stack.engine.connect() as conn:
        row = (await conn.execute(select(SimulatedRequest))).one_or_none()
    return row is not None and row.cancelled_at is not None


async def test_idempotency_and_preconditions(stack: LiveStack) -> None:
    avatar_id = await avatar_with_photos(stack, count=9)
    too_few = await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={})
    assert too_few.status_code == 422
    assert too_few.json()["code"] == "not_enough_photos"

    files = [("files", ("p9.jpg", portrait_jpegs(24)[9], "image/jpeg"))]
    await json_of(await stack.client.post(f"/v1/avatars/{avatar_id}/photos", files=files), 201)
    url = f"/v1/avatars/{avatar_id}/training"
    bad = await stack.client.post(url, json={"overrides": {"steps": 0}})
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_training_overrides"

    first = await stack.client.post(
        url, json={"preset": "quality"}, headers={"Idempotency-Key": "k1"}
    )
    replay = await stack.client.post(
        url, json={"preset": "quality"}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = await stack.client.post(url, json={"preset": "fast"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    # A duplicate that arrives while the first request is still running gets a 409.
    from avatar_api import idempotency
    from avatar_api.training.idempotent import fingerprint_for

    async with stack.engine.connect() as conn:
        tenant_id = (await conn.execute(select(Avatar.tenant_id).limit(1))).scalar_one()
    await idempotency.claim(
        stack.app.state.sessionmaker,
        tenant_id=tenant_id,
        scope="start_training",
        key="k-inflight",
        fingerprint=fingerprint_for(avatar_id, TrainingStart(preset=Preset.fast)),
    )
    inflight = await stack.client.post(
        url, json={"preset": "fast"}, headers={"Idempotency-Key": "k-inflight"}
    )
    assert inflight.status_code == 409
    assert inflight.json()["code"] == "idempotent_request_in_progress"

    busy = await stack.client.post(url, json={}, headers={"Idempotency-Key": "k2"})
    assert busy.status_code == 409
    assert busy.json()["code"] == "training_not_allowed"
    # The failed request released its key: the same key works once the avatar allows it.
    history = await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}/trainings"), 200)
    assert len(history["items"]) == 1
