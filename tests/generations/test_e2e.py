"""Photos -> training -> generation -> images in our storage, through the real app, job
engine and simulator (test mode), on both database backends."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlmodel import func, select

from avatar_api.models import (
    GenerationWebhookEvent,
    SimulatedRequest,
    Training,
)
from avatar_api.settings import SimulatorFailure
from tests.live import LiveStack, json_of, live_stack
from tests.photos.portraits import portrait_jpegs
from tests.training.test_e2e import live_settings, wait_for_status

PHOTOS = portrait_jpegs(24)[:10]


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[LiveStack]:
    async with live_stack(live_settings(database_url, tmp_path)) as stack:
        yield stack


async def trained_avatar(stack: LiveStack, **avatar: Any) -> dict[str, Any]:
    """An avatar trained on the simulator, with its LoRA (if any) copied into our storage."""
    created: dict[str, Any] = await json_of(
        await stack.client.post(
            "/v1/avatars", json={"name": "Anna", "training_type": "portrait", **avatar}
        ),
        201,
    )
    files = [("files", (f"p{i}.jpg", jpeg, "image/jpeg")) for i, jpeg in enumerate(PHOTOS)]
    await json_of(await stack.client.post(f"/v1/avatars/{created['id']}/photos", files=files), 201)
    url = f"/v1/avatars/{created['id']}/generations"
    await json_of(await stack.client.post(f"/v1/avatars/{created['id']}/training", json={}), 202)
    # Queued for training is not trained.
    refused = await stack.client.post(url, json={"prompt": "on a beach"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "avatar_not_trained"
    if stack.background is None:
        stack.start_worker()
    training = await wait_for_status(stack, created["id"], "completed", "failed")
    assert training["status"] == "completed", training
    if training["result"]["kind"] == "lora":
        await stack.wait_for(lambda: _lora_copied(stack, training["id"]))
    return created


async def _lora_copied(stack: LiveStack, training_id: str) -> bool:
    async with stack.engine.connect() as conn:
        key = (
            await conn.execute(
                select(Training.lora_key).where(Training.id == uuid.UUID(training_id))
            )
        ).scalar_one()
    return key is not None


async def wait_for_generation(stack: LiveStack, generation_id: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        latest = await json_of(await stack.client.get(f"/v1/generations/{generation_id}"), 200)
        return latest["status"] in ("completed", "failed")

    await stack.wait_for(done)
    return latest


async def simulated(stack: LiveStack, endpoint: str) -> SimulatedRequest:
    async with stack.engine.connect() as conn:
        row = (
            await conn.execute(
                select(SimulatedRequest).where(SimulatedRequest.endpoint == endpoint)
            )
        ).one()
    return SimulatedRequest.model_validate(row._mapping)


async def event_count(stack: LiveStack) -> int:
    async with stack.engine.connect() as conn:
        return int(
            (
                await conn.execute(select(func.count()).select_from(GenerationWebhookEvent))
            ).scalar_one()
        )


async def download(stack: LiveStack, image: dict[str, Any]) -> tuple[str | None, Image.Image]:
    """The image's format and pixels, fetched through its download URL."""
    response = await stack.client.get(image["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == image["content_type"]
    with Image.open(io.BytesIO(response.content)) as decoded:
        decoded.load()
        return decoded.format, decoded.copy()


async def test_portrait_avatar_generates_images_into_our_storage(stack: LiveStack) -> None:
    avatar = await trained_avatar(stack, gender="female")
    trigger = avatar["trigger_phrase"]
    url = f"/v1/avatars/{avatar['id']}/generations"
    body = {
        "prompt": "on a beach at sunset",
        "num_images": 2,
        "aspect_ratio": "3:4",
        "seed": 2**32 - 1,
        "output_format": "png",
        "strength": 0.8,
    }
    created = await stack.client.post(url, json=body, headers={"Idempotency-Key": "gen-1"})
    first = await json_of(created, 202)
    assert first["status"] == "queued"
    assert first["test_mode"] is True
    assert first["endpoint"] == "fal-ai/flux-lora"
    assert first["final_prompt"] == f"a photo of {trigger} woman, on a beach at sunset"
    assert first["prompt"] == "on a beach at sunset"
    assert first["images"] == []

    replay = await stack.client.post(url, json=body, headers={"Idempotency-Key": "gen-1"})
    assert replay.status_code == 202
    assert replay.json() == first
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = await stack.client.post(
        url, json={**body, "seed": 1}, headers={"Idempotency-Key": "gen-1"}
    )
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"

    done = await wait_for_generation(stack, first["id"])
    assert done["status"] == "completed", done
    assert done["seed"] == 2**32 - 1
    assert done["request_id"]
    assert done["submitted_at"] <= done["completed_at"]
    assert len(done["images"]) == 2
    pixels = []
    for image in done["images"]:
        # Our copy under the avatar's prefix, not the simulator's ("fal's CDN") file.
        assert "/tenants/" in image["url"]
        assert f"/generations/{first['id']}/" in image["url"]
        assert (image["width"], image["height"], image["nsfw"]) == (768, 1024, False)
        assert image["content_type"] == "image/png"
        image_format, decoded = await download(stack, image)
        assert (image_format, decoded.size) == ("PNG", (768, 1024))
        pixels.append(decoded.getpixel((700, 900)))
    assert pixels[0] != pixels[1]  # two different images, not one copied twice

    # What "fal" was sent: our copy of the LoRA, at the requested scale and size.
    request = await simulated(stack, "fal-ai/flux-lora")
    assert request.arguments["loras"][0]["scale"] == 0.8
    assert "/results/" in request.arguments["loras"][0]["path"]
    assert request.arguments["image_size"] == "portrait_4_3"
    assert request.arguments["prompt"] == done["final_prompt"]
    assert request.error is None
    assert await event_count(stack) == 1

    listed = await json_of(await stack.client.get(url), 200)
    assert [g["id"] for g in listed["items"]] == [first["id"]]
    assert listed["next_cursor"] is None

    # Another tenant sees nothing of it.
    other = await stack.client_for("intruder")
    for path in (f"/v1/generations/{first['id']}", url):
        response = await other.get(path)
        assert response.status_code == 404, path
    stolen = await other.post(url, json={"prompt": "x"})
    assert stolen.status_code == 404


async def test_style_finetune_generates_with_the_lost_webhook_polled(
    database_url: str, tmp_path: Path
) -> None:
    # No webhook ever arrives: the reconciler's polling completes training and generation.
    settings = live_settings(
        database_url, tmp_path, simulator_failure=SimulatorFailure.lost_webhook
    )
    async with live_stack(settings) as stack:
        avatar = await trained_avatar(stack, training_type="style")
        trigger = avatar["trigger_phrase"]
        url = f"/v1/avatars/{avatar['id']}/generations"
        unsupported = await stack.client.post(url, json={"prompt": "a fox", "guidance_scale": 5})
        assert unsupported.status_code == 422
        assert unsupported.json()["code"] == "invalid_generation_input"
        assert unsupported.json()["errors"][0]["loc"] == ["body", "guidance_scale"]

        created = await json_of(
            await stack.client.post(
                url, json={"prompt": "a fox in a forest", "image_size": "landscape_16_9"}
            ),
            202,
        )
        assert created["endpoint"] == "fal-ai/flux-pro/v1.1-ultra-finetuned"
        assert created["final_prompt"] == f"a fox in a forest, in the style of {trigger}"
        done = await wait_for_generation(stack, created["id"])
        assert done["status"] == "completed", done
        assert await event_count(stack) == 0

        request = await simulated(stack, "fal-ai/flux-pro/v1.1-ultra-finetuned")
        assert request.arguments["aspect_ratio"] == "16:9"
        assert request.arguments["finetune_strength"] == 1.0
        assert request.arguments["finetune_id"].startswith("sim-finetune-")
        [image] = done["images"]
        image_format, decoded = await download(stack, image)
        assert image_format == "JPEG"
        assert decoded.size == (image["width"], image["height"])
        assert abs(decoded.size[0] / decoded.size[1] - 16 / 9) < 0.02
        assert isinstance(done["seed"], int)
