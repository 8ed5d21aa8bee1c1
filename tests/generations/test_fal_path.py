"""Generations through the real fal path: FalClientGateway and fal-client, stubbed at HTTP.

fal (queue API, CDN, JWKS) is served by pytest-httpx, so fal-client builds, sends and parses
every queue call; the job handlers run one at a time on the test's rolled-back transaction,
and the webhook goes through the real receiver route and signature verifier.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fal_client import client as fal_internals
from fastapi import FastAPI
from PIL import Image
from pytest_httpx import HTTPXMock
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.app import create_app
from avatar_api.auth.service import Principal, create_api_key
from avatar_api.db import utcnow
from avatar_api.fal.cleanup import PROVIDER_CLEANUP_JOB, cleanup_provider_request
from avatar_api.fal.client import FalClientGateway
from avatar_api.fal.webhook_signature import FalWebhookSigner
from avatar_api.generations import service
from avatar_api.generations.errors import GenerationNotCancellable
from avatar_api.generations.schemas import GenerationCreate
from avatar_api.generations.tasks import (
    APPLY_JOB,
    POLL_JOB,
    apply_generation_event,
    poll_generation,
    reconcile_generations,
    submit_generation,
)
from avatar_api.generations.tokens import webhook_url
from avatar_api.jobs.errors import RetryableJobError
from avatar_api.jobs.registry import JobContext, JobHandler
from avatar_api.models import (
    Avatar,
    AvatarStatus,
    Gender,
    Generation,
    GenerationStatus,
    GenerationWebhookEvent,
    Job,
    Training,
    TrainingStatus,
    TrainingType,
    WebhookDelivery,
    WebhookEndpoint,
)
from avatar_api.services import Services
from avatar_api.settings import Settings
from avatar_api.storage_keys import result_key
from tests.conftest import make_settings

KEY = "key-id:key-secret"
BASE = "https://api.example.com"
QUEUE = "https://queue.fal.run"
FLUX_LORA = "fal-ai/flux-lora"
ULTRA = "fal-ai/flux-pro/v1.1-ultra-finetuned"
REQUEST_ID = "0b1c9c6e-4f0a-4d5e-9d3e-5d0f3c2b1a00"
FAL_LORA_URL = "https://v3.fal.media/files/koala/lora.safetensors"
JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
CDN = "https://v3.fal.media/files/penguin"


def jpeg(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def submit_reply(endpoint: str) -> dict[str, Any]:
    base = f"{QUEUE}/{endpoint}/requests/{REQUEST_ID}"
    return {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "queue_position": 0,
    }


@pytest.fixture(autouse=True)
def _no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_internals, "_get_retry_delay", lambda *args, **kwargs: 0.0)


@pytest.fixture
def fal_settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url=database_url,
        storage_local_root=tmp_path / "storage",
        test_mode=False,
        fal_key=KEY,
        public_base_url=BASE,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def fal_app(
    fal_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
) -> AsyncIterator[FastAPI]:
    gateway = FalClientGateway(KEY, http_client=http, timeout=5.0)
    app = create_app(fal_settings, sessionmaker=sessionmaker, gateway=gateway, http=http)
    yield app
    await gateway.aclose()


@pytest.fixture
def services(fal_app: FastAPI) -> Services:
    found: Services = fal_app.state.services
    return found


async def run(handler: JobHandler, services: Services, **payload: str) -> None:
    async with services.sessionmaker() as session:
        job = Job(kind="test.job", payload=payload)
        await handler(JobContext(session=session, job=job, services=services, attempt=1))
        await session.commit()


async def trained_avatar(
    services: Services, *, training_type: TrainingType, lora_key: bool = True
) -> tuple[Principal, Avatar, Training]:
    async with services.sessionmaker() as session:
        issued = await create_api_key(session, tenant_name=f"fal-path-{uuid.uuid4().hex[:8]}")
        tenant_id = issued.tenant.id
        avatar = Avatar(
            tenant_id=tenant_id,
            name="Anna",
            training_type=training_type,
            gender=Gender.female,
            trigger_phrase="TOK_1a2b3c4d",
            status=AvatarStatus.completed,
        )
        session.add(avatar)
        await session.flush()
        pro = training_type is TrainingType.style
        training = Training(
            tenant_id=tenant_id,
            avatar_id=avatar.id,
            attempt=1,
            status=TrainingStatus.completed,
            endpoint="fal-ai/flux-pro-trainer" if pro else "fal-ai/flux-lora-portrait-trainer",
            test_mode=False,
            finetune_id="ft-7e1d" if pro else None,
            lora_url=None if pro else FAL_LORA_URL,
        )
        session.add(training)
        await session.flush()
        if lora_key and not pro:
            training.lora_key = result_key(
                tenant_id, avatar.id, training.id, "pytorch_lora_weights.safetensors"
            )
        # Subscribed, so finished generations leave a delivery row to look at.
        session.add(
            WebhookEndpoint(
                tenant_id=tenant_id,
                url="https://client.example/hooks",
                events=["generation.completed", "generation.failed"],
                encrypted_secret="unused",
            )
        )
        await session.commit()
    return Principal(tenant_id=tenant_id, api_key_id=issued.api_key.id), avatar, training


async def create(
    services: Services, principal: Principal, avatar: Avatar, **body: Any
) -> Generation:
    async with services.sessionmaker() as session:
        generation = await service.create_generation(
            session,
            services=services,
            principal=principal,
            avatar_id=avatar.id,
            data=GenerationCreate.model_validate(body),
        )
        await session.commit()
    return generation


async def reload(services: Services, generation: Generation) -> Generation:
    async with services.sessionmaker() as session:
        found = await session.get(Generation, generation.id)
    assert found is not None
    return found


async def event_types(services: Services, principal: Principal) -> list[str]:
    async with services.sessionmaker() as session:
        rows = await session.exec(
            select(WebhookDelivery.event_type).where(
                WebhookDelivery.tenant_id == principal.tenant_id
            )
        )
        return list(rows.all())


def add_submit(httpx_mock: HTTPXMock, endpoint: str, **response: Any) -> None:
    httpx_mock.add_response(
        method="POST",
        url=re.compile(re.escape(f"{QUEUE}/{endpoint}?fal_webhook=") + ".*"),
        **(response or {"json": submit_reply(endpoint)}),
    )


def sent_json(httpx_mock: HTTPXMock, endpoint: str) -> tuple[dict[str, Any], httpx.Request]:
    [request] = [r for r in httpx_mock.get_requests(method="POST") if r.url.path == f"/{endpoint}"]
    body: dict[str, Any] = json.loads(request.content)
    return body, request


async def test_lora_generation_submits_polls_and_copies_images(
    services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, training = await trained_avatar(
        services, training_type=TrainingType.portrait
    )
    generation = await create(
        services,
        principal,
        avatar,
        prompt="in Paris",
        num_images=2,
        seed=42,
        image_size="portrait_16_9",
        guidance_scale=4.0,
        strength=0.9,
    )
    add_submit(httpx_mock, FLUX_LORA)

    await run(submit_generation, services, generation_id=str(generation.id))

    body, request = sent_json(httpx_mock, FLUX_LORA)
    lora_path = body["loras"][0].pop("path")
    assert body == {
        "prompt": "a photo of TOK_1a2b3c4d woman, in Paris",
        "loras": [{"scale": 0.9}],
        "image_size": "portrait_16_9",
        "num_inference_steps": 28,
        "guidance_scale": 4.0,
        "num_images": 2,
        "enable_safety_checker": True,
        "output_format": "jpeg",
        "seed": 42,
    }
    # Our copy of the LoRA (fal's CDN link expires), valid for hours.
    assert lora_path.startswith(f"{BASE}/v1/files/tenants/{principal.tenant_id}/")
    assert "/results/" in lora_path
    expires = int(parse_qs(urlsplit(lora_path).query)["expires"][0])
    assert expires - services.clock().timestamp() > 3600
    assert parse_qs(request.url.query.decode())["fal_webhook"] == [
        webhook_url(services.settings, generation.id)
    ]
    assert request.headers["Authorization"] == f"Key {KEY}"
    submitted = await reload(services, generation)
    assert submitted.status is GenerationStatus.in_queue
    assert submitted.request_id == REQUEST_ID
    assert submitted.fal_input is not None
    assert submitted.fal_input["loras"][0]["path"] == f"<lora of training {training.id}>"

    # No webhook: the reconciler asks for a poll, and the poll finds the result.
    counts = await reconcile_generations(services)
    assert counts["generation_polls"] == 1
    async with services.sessionmaker() as session:
        polls = (await session.exec(select(Job).where(Job.kind == POLL_JOB))).all()
    assert [job.payload for job in polls] == [{"generation_id": str(generation.id)}]

    request_url = f"{QUEUE}/{FLUX_LORA}/requests/{REQUEST_ID}"
    httpx_mock.add_response(
        url=f"{request_url}/status?logs=true",
        json={"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 3.1}},
    )
    images = [jpeg(576, 1024, (200, 10, 10)), jpeg(576, 1024, (10, 10, 200))]
    httpx_mock.add_response(
        url=request_url,
        json={
            "images": [
                {"url": f"{CDN}/a.jpg", "width": 576, "height": 1024, "content_type": "image/jpeg"},
                {"url": f"{CDN}/b.jpg", "width": 576, "height": 1024, "content_type": "image/jpeg"},
            ],
            "seed": 42,
            "has_nsfw_concepts": [False, True],
            "timings": {"inference": 3.0},
            "prompt": body["prompt"],
        },
    )
    for name, data in zip(("a", "b"), images, strict=True):
        httpx_mock.add_response(
            url=f"{CDN}/{name}.jpg", content=data, headers={"Content-Type": "image/jpeg"}
        )

    await run(poll_generation, services, generation_id=str(generation.id))

    done = await reload(services, generation)
    assert done.status is GenerationStatus.completed
    assert done.seed == 42
    assert [(i["nsfw"], i["width"], i["height"]) for i in done.images] == [
        (False, 576, 1024),
        (True, 576, 1024),
    ]
    for index, (image, data) in enumerate(zip(done.images, images, strict=True)):
        assert image["key"].endswith(f"/generations/{generation.id}/{index}.jpg")
        stored = b"".join([chunk async for chunk in services.storage.iter_chunks(image["key"])])
        assert stored == data
    read = await service.to_read(done, services)
    assert all(i.url.startswith(f"{BASE}/v1/files/tenants/") for i in read.images)
    assert await event_types(services, principal) == ["generation.completed"]


async def test_finetune_generation_completes_from_the_signed_webhook(
    fal_app: FastAPI, services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.style)
    generation = await create(
        services, principal, avatar, prompt="a lighthouse", aspect_ratio="21:9", strength=1.5
    )
    add_submit(httpx_mock, ULTRA)
    await run(submit_generation, services, generation_id=str(generation.id))
    body, _ = sent_json(httpx_mock, ULTRA)
    assert body == {
        "prompt": "a lighthouse, in the style of TOK_1a2b3c4d",
        "finetune_id": "ft-7e1d",
        "finetune_strength": 1.5,
        "aspect_ratio": "21:9",
        "num_images": 1,
        "output_format": "jpeg",
        "safety_tolerance": "2",
    }

    signer = FalWebhookSigner()
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks(), is_reusable=True)
    document = {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "status": "OK",
        "payload": {
            "images": [{"url": f"{CDN}/ultra.jpg", "content_type": "image/jpeg"}],
            "seed": 991,
            "has_nsfw_concepts": [False],
            "timings": {},
        },
    }
    raw = json.dumps(document).encode()
    path = urlsplit(webhook_url(services.settings, generation.id)).path
    headers = {
        **signer.sign(REQUEST_ID, "fal-user", raw, int(services.clock().timestamp())),
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fal_app), base_url=BASE) as fal:
        forged = await fal.post(
            path[: path.rindex("/")] + "/not-the-token", content=raw, headers=headers
        )
        assert forged.status_code == 401
        assert forged.json()["code"] == "fal_webhook_rejected"
        first = await fal.post(path, content=raw, headers=headers)
        again = await fal.post(path, content=raw, headers=headers)
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})

    async with services.sessionmaker() as session:
        applies = (await session.exec(select(Job).where(Job.kind == APPLY_JOB))).all()
    assert len(applies) == 1
    ultra = jpeg(1568, 672, (30, 160, 30))
    httpx_mock.add_response(
        url=f"{CDN}/ultra.jpg", content=ultra, headers={"Content-Type": "image/jpeg"}
    )

    await run(apply_generation_event, services, **applies[0].payload)

    done = await reload(services, generation)
    assert done.status is GenerationStatus.completed
    assert done.seed == 991
    [image] = done.images
    assert (image["width"], image["nsfw"], image["size"]) == (None, False, len(ultra))
    async with services.sessionmaker() as session:
        event = (await session.exec(select(GenerationWebhookEvent))).one()
    assert event.applied_at is not None
    # Applying it again changes nothing and fetches nothing.
    await run(apply_generation_event, services, **applies[0].payload)
    assert len(httpx_mock.get_requests(url=f"{CDN}/ultra.jpg")) == 1


async def test_fal_refusing_the_input_fails_the_generation(
    services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.style)
    generation = await create(services, principal, avatar, prompt="x")
    add_submit(
        httpx_mock,
        ULTRA,
        status_code=422,
        json={"detail": [{"loc": ["body", "finetune_id"], "msg": "finetune not found"}]},
    )
    await run(submit_generation, services, generation_id=str(generation.id))
    failed = await reload(services, generation)
    assert failed.status is GenerationStatus.failed
    assert failed.error_code == "fal_rejected"
    assert failed.error_message is not None
    assert "finetune_id: finetune not found" in failed.error_message
    assert await event_types(services, principal) == ["generation.failed"]


def signed(
    signer: FalWebhookSigner, services: Services, document: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(document).encode()
    stamp = int(services.clock().timestamp())
    headers = signer.sign(str(document["request_id"]), "fal-user", raw, stamp)
    return raw, {**headers, "Content-Type": "application/json"}


async def test_ambiguous_submit_is_never_repeated_and_the_webhook_settles_it(
    fal_app: FastAPI, services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="x")
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"), method="POST")
    await run(submit_generation, services, generation_id=str(generation.id))
    await run(submit_generation, services, generation_id=str(generation.id))
    assert len(httpx_mock.get_requests(method="POST")) == 1
    pending = await reload(services, generation)
    assert (pending.status, pending.request_id) == (GenerationStatus.submitting, None)

    # fal did queue it: its webhook, under this generation's token, names the request.
    signer = FalWebhookSigner()
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    raw, headers = signed(
        signer,
        services,
        {
            "request_id": REQUEST_ID,
            "status": "OK",
            "payload": {"images": [{"url": f"{CDN}/l.jpg"}]},
        },
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fal_app)) as fal:
        response = await fal.post(
            webhook_url(services.settings, generation.id), content=raw, headers=headers
        )
    assert response.status_code == 200
    assert (await reload(services, generation)).request_id == REQUEST_ID
    httpx_mock.add_response(url=f"{CDN}/l.jpg", content=jpeg(64, 64, (1, 2, 3)))
    async with services.sessionmaker() as session:
        job = (await session.exec(select(Job).where(col(Job.kind) == APPLY_JOB))).one()
    await run(apply_generation_event, services, **job.payload)
    done = await reload(services, generation)
    assert done.status is GenerationStatus.completed
    assert done.images[0]["content_type"] == "image/jpeg"  # no type announced: fal's format


async def test_lost_submission_and_overdue_generations_fail(
    services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    lost = await create(services, principal, avatar, prompt="lost")
    slow = await create(services, principal, avatar, prompt="slow")
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"), method="POST")
    await run(submit_generation, services, generation_id=str(lost.id))
    add_submit(httpx_mock, FLUX_LORA)
    await run(submit_generation, services, generation_id=str(slow.id))

    assert await reconcile_generations(services) == {
        "generation_polls": 1,
        "generation_submission_lost": 0,
        "generation_timed_out": 0,
    }
    later = dataclasses.replace(services, clock=lambda: utcnow() + timedelta(hours=2))
    counts = await reconcile_generations(later)
    assert (counts["generation_submission_lost"], counts["generation_timed_out"]) == (1, 1)
    assert (await reload(services, lost)).error_code == "submission_lost"
    assert (await reload(services, slow)).error_code == "generation_timeout"
    assert await event_types(services, principal) == ["generation.failed"] * 2


async def test_unreachable_fal_puts_it_back_in_the_queue(
    services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="x")
    httpx_mock.add_exception(httpx.ConnectError("refused"), is_reusable=True)
    with pytest.raises(RetryableJobError):
        await run(submit_generation, services, generation_id=str(generation.id))
    back = await reload(services, generation)
    assert (back.status, back.submit_started_at) == (GenerationStatus.queued, None)


@pytest.mark.parametrize(("cdn_status", "retried"), [(404, False), (503, True)])
async def test_image_copy_failures(
    services: Services, httpx_mock: HTTPXMock, cdn_status: int, retried: bool
) -> None:
    principal, avatar, _ = await trained_avatar(
        services, training_type=TrainingType.portrait, lora_key=False
    )
    generation = await create(services, principal, avatar, prompt="x")
    add_submit(httpx_mock, FLUX_LORA)
    await run(submit_generation, services, generation_id=str(generation.id))
    body, _ = sent_json(httpx_mock, FLUX_LORA)
    assert body["loras"][0]["path"] == FAL_LORA_URL  # no copy yet: fal's own URL

    request_url = f"{QUEUE}/{FLUX_LORA}/requests/{REQUEST_ID}"
    httpx_mock.add_response(
        url=f"{request_url}/status?logs=true", json={"status": "COMPLETED", "logs": []}
    )
    httpx_mock.add_response(
        url=request_url, json={"images": [{"url": f"{CDN}/gone.jpg"}], "seed": 1}
    )
    httpx_mock.add_response(url=f"{CDN}/gone.jpg", status_code=cdn_status)
    if retried:
        with pytest.raises(RetryableJobError):
            await run(poll_generation, services, generation_id=str(generation.id))
    else:
        await run(poll_generation, services, generation_id=str(generation.id))
    after = await reload(services, generation)
    if retried:
        assert after.status is GenerationStatus.in_progress
        assert after.images == []
    else:
        assert after.status is GenerationStatus.failed
        assert after.error_code == "image_copy_failed"
    assert not await services.storage.exists(
        f"tenants/{principal.tenant_id}/avatars/{avatar.id}/generations/{generation.id}/0.jpg"
    )


async def test_fal_error_webhook_fails_the_generation(
    fal_app: FastAPI, services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="x")
    add_submit(httpx_mock, FLUX_LORA)
    await run(submit_generation, services, generation_id=str(generation.id))
    signer = FalWebhookSigner()
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    raw = json.dumps(
        {
            "request_id": REQUEST_ID,
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"msg": "loras[0].path: could not download"}]},
        }
    ).encode()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fal_app)) as fal:
        response = await fal.post(
            webhook_url(services.settings, generation.id),
            content=raw,
            headers=signer.sign(REQUEST_ID, "fal-user", raw, int(services.clock().timestamp())),
        )
    assert response.status_code == 200
    async with services.sessionmaker() as session:
        job = (await session.exec(select(Job).where(col(Job.kind) == APPLY_JOB))).one()
    await run(apply_generation_event, services, **job.payload)
    failed = await reload(services, generation)
    assert failed.status is GenerationStatus.failed
    assert failed.error_code == "fal_error"
    assert failed.error_message is not None
    assert "could not download" in failed.error_message


async def cleanup_jobs(services: Services) -> list[dict[str, Any]]:
    async with services.sessionmaker() as session:
        rows = await session.exec(select(Job).where(Job.kind == PROVIDER_CLEANUP_JOB))
        return [job.payload for job in rows.all()]


async def cancel(services: Services, principal: Principal, generation: Generation) -> Generation:
    async with services.sessionmaker() as session:
        cancelled = await service.cancel_generation(
            session, principal=principal, generation_id=generation.id
        )
        await session.commit()
    return cancelled


async def test_cancelling_a_submitted_generation_stops_it_at_fal(
    services: Services, fal_app: FastAPI, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="in Rome")
    add_submit(httpx_mock, FLUX_LORA)
    await run(submit_generation, services, generation_id=str(generation.id))

    # Over HTTP, as the caller does; another tenant cannot.
    async with services.sessionmaker() as session:
        owner = await create_api_key(session, tenant_name="unused")
        await session.commit()
    transport = httpx.ASGITransport(app=fal_app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as anon:
        stranger = await anon.post(
            f"/v1/generations/{generation.id}/cancel",
            headers={"Authorization": f"Bearer {owner.secret}"},
        )
    assert stranger.status_code == 404
    assert stranger.json()["code"] == "generation_not_found"

    cancelled = await cancel(services, principal, generation)
    assert cancelled.status is GenerationStatus.cancelled
    assert cancelled.error_code == "cancelled"
    assert await cleanup_jobs(services) == [
        {"endpoint": FLUX_LORA, "request_id": REQUEST_ID, "cancel": True}
    ]
    with pytest.raises(GenerationNotCancellable):
        await cancel(services, principal, generation)

    # The cleanup job asks fal to cancel, then deletes the request's stored payloads.
    request_url = f"{QUEUE}/{FLUX_LORA}/requests/{REQUEST_ID}"
    httpx_mock.add_response(
        method="PUT", url=f"{request_url}/cancel", json={"status": "CANCELLATION_REQUESTED"}
    )
    httpx_mock.add_response(method="DELETE", url=re.compile(".*payloads.*"), json={})
    await run(
        cleanup_provider_request, services, endpoint=FLUX_LORA, request_id=REQUEST_ID, cancel="1"
    )
    assert [r.method for r in httpx_mock.get_requests() if REQUEST_ID in str(r.url)][-2:] == [
        "PUT",
        "DELETE",
    ]
    # fal's late news changes nothing.
    assert (await reload(services, generation)).status is GenerationStatus.cancelled


async def test_a_generation_cancelled_while_being_submitted_is_stopped_when_fal_answers(
    services: Services, httpx_mock: HTTPXMock
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="in Oslo")

    async def cancel_then_answer(request: httpx.Request) -> httpx.Response:
        # The caller cancels while our submit call is at fal's door.
        await cancel(services, principal, generation)
        return httpx.Response(200, json=submit_reply(FLUX_LORA))

    httpx_mock.add_callback(
        cancel_then_answer,
        method="POST",
        url=re.compile(re.escape(f"{QUEUE}/{FLUX_LORA}?fal_webhook=") + ".*"),
    )
    await run(submit_generation, services, generation_id=str(generation.id))

    done = await reload(services, generation)
    assert done.status is GenerationStatus.cancelled
    assert done.request_id == REQUEST_ID
    assert await cleanup_jobs(services) == [
        {"endpoint": FLUX_LORA, "request_id": REQUEST_ID, "cancel": True}
    ]


async def test_a_queued_generation_is_cancelled_before_fal_ever_sees_it(
    services: Services,
) -> None:
    principal, avatar, _ = await trained_avatar(services, training_type=TrainingType.portrait)
    generation = await create(services, principal, avatar, prompt="in Lima")
    await cancel(services, principal, generation)
    # No request at fal: nothing to clean up, and the submit job has nothing to do (no
    # HTTP stub is registered, so any call to fal would fail the test).
    await run(submit_generation, services, generation_id=str(generation.id))
    assert (await reload(services, generation)).status is GenerationStatus.cancelled
    assert await cleanup_jobs(services) == []
