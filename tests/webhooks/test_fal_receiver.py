"""The inbound fal receiver, ``POST /v1/webhooks/fal/{training_id}/{token}``, end to end.

Real commits (tests/live.py): the app runs on a real engine, and the receiver's verifier
is a real :class:`FalWebhookVerifier` whose JWKS is fal's URL served by pytest-httpx.
Webhooks are signed with :class:`FalWebhookSigner` exactly like fal signs them; a second
signer plays "another key" (a forger, or the key fal rotates to). "Nothing stored" is
checked by counting ``fal_webhook_events`` rows and jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pytest_httpx import HTTPXMock
from sqlalchemy import delete
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.errors import PROBLEM_CONTENT_TYPE
from avatar_api.fal.webhook_signature import (
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    USER_ID_HEADER,
    FalWebhookSigner,
    FalWebhookVerifier,
)
from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.registry import JobRegistry
from avatar_api.jobs.worker import Worker
from avatar_api.models import (
    Avatar,
    AvatarStatus,
    FalWebhookEvent,
    Job,
    JobStatus,
    Tenant,
    Training,
    TrainingStatus,
    TrainingType,
)
from avatar_api.settings import Settings
from avatar_api.training.repository import lock_with_avatar
from avatar_api.training.tasks import APPLY_EVENT_JOB
from avatar_api.training.tokens import webhook_token, webhook_url
from avatar_api.webhooks.fal_service import MAX_BODY_BYTES, receive_fal_webhook
from tests.conftest import make_settings
from tests.live import LiveStack, live_stack

# Tests that never reach verification (an oversized body) never fetch the JWKS.
pytestmark = pytest.mark.httpx_mock(assert_all_responses_were_requested=False)

JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
FAL_USER = "fal-user-4f1c"
PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
TOLERANCE = 300
LORA_URL = "https://v3.fal.media/files/rabbit/abc_pytorch_lora_weights.safetensors"
CONFIG_URL = "https://v3.fal.media/files/rabbit/abc_config.json"

_AVATAR_STATUS = {
    TrainingStatus.queued: AvatarStatus.queued,
    TrainingStatus.submitting: AvatarStatus.queued,
    TrainingStatus.in_queue: AvatarStatus.queued,
    TrainingStatus.in_progress: AvatarStatus.training,
    TrainingStatus.completed: AvatarStatus.completed,
    TrainingStatus.failed: AvatarStatus.failed,
    TrainingStatus.cancelled: AvatarStatus.cancelled,
}


# --- fal's side: its JWKS endpoint and its webhooks --------------------------------------


class FalJwks:
    """fal's JWKS endpoint as pytest-httpx serves it: what is published, and each fetch."""

    def __init__(self, *published: FalWebhookSigner) -> None:
        self.published = list(published)
        self.fetches = 0
        self.reachable = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if not self.reachable:
            raise httpx.ConnectError("connection refused", request=request)
        keys = [key for signer in self.published for key in signer.jwks()["keys"]]
        return httpx.Response(200, json={"keys": keys})


@dataclass
class WallClock:
    """The verifier's clock: real time plus an offset the test can move forward."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def ok_body(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": {
            "diffusers_lora_file": {
                "url": LORA_URL,
                "content_type": "application/octet-stream",
                "file_name": "pytorch_lora_weights.safetensors",
                "file_size": 89745224,
            },
            "config_file": {
                "url": CONFIG_URL,
                "content_type": "application/json",
                "file_name": "config.json",
                "file_size": 1024,
            },
        },
    }


@dataclass
class Fal:
    """Signs and sends webhooks the way fal does, to the app of a live stack."""

    stack: LiveStack
    http: httpx.AsyncClient
    jwks: FalJwks
    clock: WallClock
    signer: FalWebhookSigner
    other_signer: FalWebhookSigner
    sent: list[bytes] = field(default_factory=list)

    def path_for(self, training_id: uuid.UUID, token: str | None = None) -> str:
        url = webhook_url(self.stack.settings, training_id)
        if token is None:
            return urlsplit(url).path
        return f"/v1/webhooks/fal/{training_id}/{token}"

    def sign(
        self,
        body: bytes,
        request_id: str,
        *,
        signer: FalWebhookSigner | None = None,
        user_id: str = FAL_USER,
        timestamp: int | None = None,
    ) -> dict[str, str]:
        stamp = int(self.clock()) if timestamp is None else timestamp
        return (signer or self.signer).sign(request_id, user_id, body, stamp)

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        return await self.http.post(
            path, content=body, headers={**headers, "Content-Type": "application/json"}
        )

    async def deliver(
        self,
        training_id: uuid.UUID,
        document: Mapping[str, Any],
        *,
        token: str | None = None,
        signer: FalWebhookSigner | None = None,
        user_id: str = FAL_USER,
        timestamp: int | None = None,
    ) -> httpx.Response:
        """Sign ``document`` for the request id it names and POST it to the training's URL."""
        body = json.dumps(document).encode()
        headers = self.sign(
            body, str(document["request_id"]), signer=signer, user_id=user_id, timestamp=timestamp
        )
        return await self.post(self.path_for(training_id, token), body, headers)


def install_verifier(stack: LiveStack, jwks: FalJwks, clock: WallClock) -> httpx.AsyncClient:
    """Give the app a real verifier fetching fal's JWKS URL (stubbed by pytest-httpx)."""
    http = httpx.AsyncClient()
    stack.app.state.fal_verifier = FalWebhookVerifier(
        JWKS_URL,
        http=http,
        tolerance_seconds=stack.settings.fal_webhook_tolerance_seconds,
        clock=clock,
    )
    return http


def receiver_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_local_root": tmp_path / "storage",
        "fal_webhook_tolerance_seconds": TOLERANCE,
    }
    values.update(overrides)
    return make_settings(**values)


@contextlib.asynccontextmanager
async def open_receiver(settings: Settings, httpx_mock: HTTPXMock) -> AsyncIterator[Fal]:
    signer, other_signer = FalWebhookSigner(), FalWebhookSigner()
    jwks = FalJwks(signer)
    httpx_mock.add_callback(jwks, url=JWKS_URL, is_reusable=True)
    clock = WallClock()
    async with live_stack(settings) as stack:
        verifier_http = install_verifier(stack, jwks, clock)
        # fal sends no API key.
        fal_http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stack.app), base_url=settings.public_base_url
        )
        async with verifier_http, fal_http:
            yield Fal(
                stack=stack,
                http=fal_http,
                jwks=jwks,
                clock=clock,
                signer=signer,
                other_signer=other_signer,
            )


@pytest.fixture
async def fal(database_url: str, tmp_path: Path, httpx_mock: HTTPXMock) -> AsyncIterator[Fal]:
    async with open_receiver(receiver_settings(database_url, tmp_path), httpx_mock) as fal:
        yield fal


# --- the database side --------------------------------------------------------------------


async def make_training(
    stack: LiveStack,
    *,
    status: TrainingStatus = TrainingStatus.in_progress,
    submitted: bool = True,
) -> Training:
    """A tenant, an avatar and one training in ``status``, committed."""
    now = utcnow()
    async with session_scope(stack.app.state.sessionmaker) as session:
        tenant = Tenant(name=f"fal-receiver-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        await session.flush()
        avatar = Avatar(
            tenant_id=tenant.id,
            name="Anna",
            training_type=TrainingType.portrait,
            trigger_phrase="PERSON_ANNA",
            status=_AVATAR_STATUS[status],
        )
        session.add(avatar)
        await session.flush()
        training = Training(
            tenant_id=tenant.id,
            avatar_id=avatar.id,
            attempt=1,
            status=status,
            endpoint=PORTRAIT,
            test_mode=True,
            photo_count=10,
            parameters={"steps": 300},
            request_id=str(uuid.uuid4()) if submitted else None,
            submit_started_at=now,
            submitted_at=now if submitted else None,
        )
        if status is TrainingStatus.cancelled:
            training.error_code = "cancelled"
            training.completed_at = now
        session.add(training)
    return training


def request_id_of(training: Training) -> str:
    assert training.request_id is not None
    return training.request_id


async def load(stack: LiveStack, training_id: uuid.UUID) -> tuple[Training, Avatar]:
    async with stack.app.state.sessionmaker() as session:
        training = await session.get(Training, training_id)
        assert training is not None
        avatar = await session.get(Avatar, training.avatar_id)
        assert avatar is not None
        return training, avatar


async def events(stack: LiveStack) -> list[FalWebhookEvent]:
    async with stack.app.state.sessionmaker() as session:
        rows = await session.exec(
            select(FalWebhookEvent).order_by(col(FalWebhookEvent.received_at))
        )
        return list(rows.all())


async def apply_jobs(stack: LiveStack) -> list[Job]:
    async with stack.app.state.sessionmaker() as session:
        rows = await session.exec(select(Job).where(Job.kind == APPLY_EVENT_JOB))
        return list(rows.all())


async def stored(stack: LiveStack) -> tuple[int, int]:
    """(fal_webhook_events rows, jobs of any kind)."""
    async with stack.engine.connect() as conn:
        event_count = (
            await conn.execute(select(func.count()).select_from(FalWebhookEvent))
        ).scalar_one()
        job_count = (await conn.execute(select(func.count()).select_from(Job))).scalar_one()
    return int(event_count), int(job_count)


async def apply_events(stack: LiveStack) -> int:
    """Run the due ``fal_event.apply`` jobs with the service's registered handler.

    Only that kind: what applying enqueues in turn (copying the LoRA from fal's CDN,
    client notifications) is not this module's business.
    """
    worker = Worker(
        services=stack.app.state.services,
        registry=JobRegistry([build_registry()[APPLY_EVENT_JOB]]),
        concurrency=1,
        lease_seconds=30,
        poll_interval=0.05,
    )
    total = 0
    for _ in range(20):
        ran = await worker.run_once()
        if not ran:
            return total
        total += ran
    raise AssertionError("apply jobs keep coming")


def assert_rejected(response: httpx.Response, status: int = 401, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    problem = response.json()
    assert problem["status"] == status
    assert problem["code"] == (code or "fal_webhook_rejected")


# --- accepted, stored once, applied ---------------------------------------------------------


async def test_valid_webhook_is_stored_once_and_applied_by_a_job(fal: Fal) -> None:
    training = await make_training(fal.stack)
    document = ok_body(request_id_of(training))

    response = await fal.deliver(training.id, document)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted"}
    (event,) = await events(fal.stack)
    assert event.training_id == training.id
    assert event.request_id == training.request_id
    assert event.status == "OK"
    assert event.body == document
    assert event.body_sha256 == hashlib.sha256(json.dumps(document).encode()).hexdigest()
    assert event.applied_at is None
    (job,) = await apply_jobs(fal.stack)
    assert job.payload == {"event_id": str(event.id)}
    assert job.status is JobStatus.pending
    assert await stored(fal.stack) == (1, 1)
    assert fal.jwks.fetches == 1
    # Storing is all the request did: the training moves when the job applies the event.
    assert (await load(fal.stack, training.id))[0].status is TrainingStatus.in_progress

    assert await apply_events(fal.stack) == 1

    applied, avatar = await load(fal.stack, training.id)
    assert applied.status is TrainingStatus.completed
    assert applied.lora_url == LORA_URL
    assert applied.config_url == CONFIG_URL
    assert avatar.status is AvatarStatus.completed
    (event,) = await events(fal.stack)
    assert event.applied_at is not None


async def test_duplicate_delivery_answers_2xx_and_stores_nothing_new(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(training))).encode()
    headers = fal.sign(body, request_id_of(training))
    path = fal.path_for(training.id)
    first = await fal.post(path, body, headers)
    assert first.json() == {"status": "accepted"}

    again = await fal.post(path, body, headers)
    # fal may also re-sign a retry with a fresh timestamp: still the same delivery.
    resigned = await fal.post(
        path, body, fal.sign(body, request_id_of(training), timestamp=int(fal.clock()) - 30)
    )

    for response in (again, resigned):
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "duplicate"}
    assert await stored(fal.stack) == (1, 1)
    assert await apply_events(fal.stack) == 1
    assert (await load(fal.stack, training.id))[0].status is TrainingStatus.completed
    # After it was applied, a late copy is still a duplicate and queues nothing.
    before = await stored(fal.stack)
    late = await fal.post(path, body, fal.sign(body, request_id_of(training)))
    assert late.json() == {"status": "duplicate"}
    assert await stored(fal.stack) == before
    assert len(await apply_jobs(fal.stack)) == 1


async def test_concurrent_copies_are_stored_once(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(training))).encode()
    headers = fal.sign(body, request_id_of(training))
    path = fal.path_for(training.id)

    responses = await asyncio.gather(*(fal.post(path, body, headers) for _ in range(4)))

    assert [r.status_code for r in responses] == [200] * 4
    assert sorted(r.json()["status"] for r in responses) == [
        "accepted",
        "duplicate",
        "duplicate",
        "duplicate",
    ]
    assert await stored(fal.stack) == (1, 1)


def needs_postgresql(fal: Fal) -> None:
    if fal.stack.engine.dialect.name != "postgresql":
        pytest.skip("row locks and concurrent writers need PostgreSQL (SQLite has one writer)")


async def test_concurrent_copies_on_postgresql_store_one_event_and_one_job(fal: Fal) -> None:
    # On PostgreSQL every copy is its own writer (a pooled connection each): the unique key
    # alone decides which one stores the event and its job.
    needs_postgresql(fal)
    trainings = [await make_training(fal.stack) for _ in range(3)]
    deliveries = []
    for training in trainings:
        body = json.dumps(ok_body(request_id_of(training))).encode()
        deliveries.append(
            (fal.path_for(training.id), body, fal.sign(body, request_id_of(training)))
        )

    copies = [delivery for _ in range(8) for delivery in deliveries]
    responses = await asyncio.gather(*(fal.post(*copy) for copy in copies))

    assert [r.status_code for r in responses] == [200] * len(copies)
    answers = [r.json()["status"] for r in responses]
    assert answers.count("accepted") == len(trainings)
    assert answers.count("duplicate") == len(copies) - len(trainings)
    assert await stored(fal.stack) == (len(trainings), len(trainings))
    assert sorted(event.training_id for event in await events(fal.stack)) == sorted(
        training.id for training in trainings
    )
    assert await apply_events(fal.stack) == len(trainings)


async def receive_in(session: AsyncSession, fal: Fal, training: Training, body: bytes) -> bool:
    """The receiver service itself, in ``session`` (whose transaction the caller owns)."""
    return await receive_fal_webhook(
        session,
        settings=fal.stack.settings,
        verifier=fal.stack.app.state.fal_verifier,
        training_id=training.id,
        token=webhook_token(fal.stack.settings, training.id),
        headers=fal.sign(body, request_id_of(training)),
        body=body,
    )


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
async def test_a_copy_waits_for_the_first_copys_transaction(fal: Fal, first_commits: bool) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(training))).encode()
    sessionmaker = fal.stack.app.state.sessionmaker

    async def second_copy() -> bool:
        async with session_scope(sessionmaker) as session:
            return await receive_in(session, fal, training, body)

    async with sessionmaker() as first:
        await first.connection()  # the first copy's request transaction is under way
        assert await receive_in(first, fal, training, body)
        racing = asyncio.create_task(second_copy())
        await asyncio.sleep(0.3)
        # On the unique key (PostgreSQL) or the write lock (SQLite): nothing can be decided
        # until the first copy's transaction ends.
        assert not racing.done(), "the second copy should wait for the first transaction"
        if first_commits:
            await first.commit()
        else:
            await first.rollback()

    # A committed first copy makes the second a duplicate; a rolled-back one leaves the
    # event to the second.
    assert await asyncio.wait_for(racing, timeout=10) is not first_commits
    assert await stored(fal.stack) == (1, 1)


async def test_a_writer_holding_the_training_does_not_hold_up_its_webhook(fal: Fal) -> None:
    # The reconciler, the apply job and a cancel lock and update trainings all the time
    # (through the writers' own lock, as here); a delivery only needs the row to exist, so
    # it must not queue behind their transactions.
    needs_postgresql(fal)
    training = await make_training(fal.stack)
    async with session_scope(fal.stack.app.state.sessionmaker) as writer:
        locked = await lock_with_avatar(writer, training_id=training.id)
        assert locked is not None
        locked[0].last_checked_at = utcnow()
        writer.add(locked[0])
        await writer.flush()

        response = await asyncio.wait_for(
            fal.deliver(training.id, ok_body(request_id_of(training))), timeout=10
        )

        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
    assert await stored(fal.stack) == (1, 1)


async def test_a_training_deleted_meanwhile_is_rejected_not_an_error(fal: Fal) -> None:
    # Erasing an avatar deletes its trainings while fal may still be calling.
    needs_postgresql(fal)
    training = await make_training(fal.stack)
    async with fal.stack.engine.connect() as eraser:
        await eraser.execute(delete(Training).where(col(Training.id) == training.id))
        racing = asyncio.create_task(fal.deliver(training.id, ok_body(request_id_of(training))))
        await asyncio.sleep(0.3)
        assert not racing.done(), "the delivery should wait for the deletion to end"
        await eraser.commit()

    assert_rejected(await asyncio.wait_for(racing, timeout=10))
    assert await stored(fal.stack) == (0, 0)


async def test_webhook_for_an_unknown_training_is_rejected(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(training))).encode()
    unknown = uuid.uuid4()

    response = await fal.post(fal.path_for(unknown), body, fal.sign(body, request_id_of(training)))

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


# --- not fal, or not ours: 401 and nothing stored -----------------------------------------------


async def test_forged_signature_is_rejected(fal: Fal) -> None:
    training = await make_training(fal.stack)

    response = await fal.deliver(
        training.id, ok_body(request_id_of(training)), signer=fal.other_signer
    )

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)
    # The unknown key made the verifier look for new keys only once: forged webhooks
    # cannot make us hammer fal's JWKS.
    assert fal.jwks.fetches == 1
    again = await fal.deliver(
        training.id, ok_body(request_id_of(training)), signer=fal.other_signer
    )
    assert_rejected(again)
    assert fal.jwks.fetches == 1
    assert (await load(fal.stack, training.id))[0].status is TrainingStatus.in_progress


async def test_tampered_body_is_rejected(fal: Fal) -> None:
    training = await make_training(fal.stack)
    signed = json.dumps(ok_body(request_id_of(training))).encode()
    tampered_doc = ok_body(request_id_of(training))
    tampered_doc["payload"]["diffusers_lora_file"]["url"] = "https://evil.example/lora.safetensors"
    tampered = json.dumps(tampered_doc).encode()

    response = await fal.post(
        fal.path_for(training.id), tampered, fal.sign(signed, request_id_of(training))
    )

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        pytest.param(-(TOLERANCE + 5), False, id="stale"),
        pytest.param(TOLERANCE + 5, False, id="future"),
        pytest.param(-(TOLERANCE - 30), True, id="late-but-within-tolerance"),
        pytest.param(TOLERANCE - 30, True, id="early-but-within-tolerance"),
    ],
)
async def test_timestamp_tolerance(fal: Fal, offset: int, accepted: bool) -> None:
    training = await make_training(fal.stack)

    response = await fal.deliver(
        training.id, ok_body(request_id_of(training)), timestamp=int(fal.clock()) + offset
    )

    if accepted:
        assert response.status_code == 200, response.text
        assert await stored(fal.stack) == (1, 1)
    else:
        assert_rejected(response)
        assert await stored(fal.stack) == (0, 0)


@pytest.mark.parametrize(
    "missing", [REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]
)
async def test_missing_signature_header_is_rejected(fal: Fal, missing: str) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(training))).encode()
    headers = fal.sign(body, request_id_of(training))
    del headers[missing]

    response = await fal.post(fal.path_for(training.id), body, headers)

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)
    assert fal.jwks.fetches == 0  # refused before any key was needed


async def test_replay_to_another_trainings_url_is_rejected(fal: Fal) -> None:
    mine = await make_training(fal.stack)
    other = await make_training(fal.stack)
    body = json.dumps(ok_body(request_id_of(mine))).encode()
    headers = fal.sign(body, request_id_of(mine))
    mine_token = webhook_token(fal.stack.settings, mine.id)
    other_token = webhook_token(fal.stack.settings, other.id)

    for path in (
        fal.path_for(other.id),  # the other training's own URL: not its request
        fal.path_for(other.id, mine_token),  # the other training with my token
        fal.path_for(mine.id, other_token),  # my training with the other's token
    ):
        assert_rejected(await fal.post(path, body, headers))

    assert await stored(fal.stack) == (0, 0)
    for training in (mine, other):
        loaded, _ = await load(fal.stack, training.id)
        assert loaded.status is TrainingStatus.in_progress
        assert loaded.request_id == training.request_id
    # The same delivery at its own URL is fine.
    ok = await fal.post(fal.path_for(mine.id), body, headers)
    assert ok.json() == {"status": "accepted"}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-the-token", id="garbage"),
        pytest.param(webhook_token(make_settings(), uuid.uuid4()), id="well-formed"),
        pytest.param("A" * 43, id="token-length"),
    ],
)
async def test_wrong_token_is_rejected(fal: Fal, token: str) -> None:
    training = await make_training(fal.stack)

    response = await fal.deliver(training.id, ok_body(request_id_of(training)), token=token)

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


async def test_request_id_not_created_for_the_training_is_rejected(fal: Fal) -> None:
    # fal signs every customer's webhooks: a genuine webhook about someone else's request.
    training = await make_training(fal.stack)

    response = await fal.deliver(training.id, ok_body(str(uuid.uuid4())))

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


async def test_body_request_id_must_match_the_signed_header(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = json.dumps(ok_body(str(uuid.uuid4()))).encode()
    # The signature is valid (it covers the body), but the body names another request.
    headers = fal.sign(body, request_id_of(training))

    response = await fal.post(fal.path_for(training.id), body, headers)

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


async def test_signed_body_that_is_not_json_is_rejected(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = b"<html>not json</html>"

    response = await fal.post(
        fal.path_for(training.id), body, fal.sign(body, request_id_of(training))
    )

    assert_rejected(response)
    assert await stored(fal.stack) == (0, 0)


def padded_body(request_id: str, size: int) -> bytes:
    document = ok_body(request_id)
    document["padding"] = ""
    base = len(json.dumps(document).encode())
    document["padding"] = "x" * (size - base)
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


async def test_oversized_body_is_refused_before_verification(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = padded_body(request_id_of(training), MAX_BODY_BYTES + 1)

    response = await fal.post(
        fal.path_for(training.id), body, fal.sign(body, request_id_of(training))
    )

    assert_rejected(response, 413, "fal_webhook_too_large")
    assert fal.jwks.fetches == 0
    assert await stored(fal.stack) == (0, 0)


async def test_body_of_exactly_the_limit_is_accepted(fal: Fal) -> None:
    training = await make_training(fal.stack)
    body = padded_body(request_id_of(training), MAX_BODY_BYTES)

    response = await fal.post(
        fal.path_for(training.id), body, fal.sign(body, request_id_of(training))
    )

    assert response.status_code == 200, response.text
    assert await stored(fal.stack) == (1, 1)


async def test_configured_fal_user_id_is_required(
    database_url: str, tmp_path: Path, httpx_mock: HTTPXMock
) -> None:
    settings = receiver_settings(database_url, tmp_path, fal_webhook_user_id=FAL_USER)
    async with open_receiver(settings, httpx_mock) as fal:
        training = await make_training(fal.stack)
        document = ok_body(request_id_of(training))

        wrong = await fal.deliver(training.id, document, user_id="another-fal-customer")

        assert_rejected(wrong)
        assert await stored(fal.stack) == (0, 0)
        right = await fal.deliver(training.id, document, user_id=FAL_USER)
        assert right.status_code == 200, right.text
        assert await stored(fal.stack) == (1, 1)


# --- fal's keys -----------------------------------------------------------------------------


async def test_rotated_key_is_found_by_refetching_the_jwks(fal: Fal) -> None:
    before = await make_training(fal.stack)
    assert (await fal.deliver(before.id, ok_body(request_id_of(before)))).status_code == 200
    assert fal.jwks.fetches == 1
    rotated = await make_training(fal.stack)
    document = ok_body(request_id_of(rotated))

    # fal signs with a key its JWKS does not list yet: nothing to verify it with.
    assert_rejected(await fal.deliver(rotated.id, document, signer=fal.other_signer))
    # fal publishes the new key; its retry a minute later is verified after one refetch,
    # although the cached JWKS is far from its 24 h limit.
    fal.jwks.published.append(fal.other_signer)
    fal.clock.offset += 61

    response = await fal.deliver(rotated.id, document, signer=fal.other_signer)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted"}
    assert fal.jwks.fetches == 2
    assert await stored(fal.stack) == (2, 2)


async def test_jwks_unreachable_without_cache_is_503(fal: Fal) -> None:
    training = await make_training(fal.stack)
    document = ok_body(request_id_of(training))
    fal.jwks.reachable = False

    response = await fal.deliver(training.id, document)

    assert_rejected(response, 503, "fal_jwks_unavailable")
    assert await stored(fal.stack) == (0, 0)
    # fal retries; once its keys can be fetched again, the delivery goes through.
    fal.jwks.reachable = True
    fal.clock.offset += 61
    retried = await fal.deliver(training.id, document)
    assert retried.status_code == 200, retried.text
    assert await stored(fal.stack) == (1, 1)


async def test_cached_keys_outlive_a_jwks_outage(fal: Fal) -> None:
    first = await make_training(fal.stack)
    assert (await fal.deliver(first.id, ok_body(request_id_of(first)))).status_code == 200
    fal.jwks.reachable = False
    fal.clock.offset += 3600
    second = await make_training(fal.stack)

    response = await fal.deliver(second.id, ok_body(request_id_of(second)))

    assert response.status_code == 200, response.text
    assert fal.jwks.fetches == 1


# --- what applying a stored webhook does ------------------------------------------------------


async def test_late_success_for_a_cancelled_training_is_stored_but_changes_nothing(
    fal: Fal,
) -> None:
    training = await make_training(fal.stack, status=TrainingStatus.cancelled)

    response = await fal.deliver(training.id, ok_body(request_id_of(training)))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted"}
    assert await stored(fal.stack) == (1, 1)
    assert await apply_events(fal.stack) == 1
    after, avatar = await load(fal.stack, training.id)
    assert after.status is TrainingStatus.cancelled
    assert after.error_code == "cancelled"
    assert after.lora_url is None
    assert avatar.status is AvatarStatus.cancelled
    (event,) = await events(fal.stack)
    assert event.applied_at is not None
    (job,) = await apply_jobs(fal.stack)
    assert job.status is JobStatus.succeeded


ERROR_MESSAGE = "The archive has 3 usable images; at least 10 are required."
PAYLOAD_ERROR = "Response payload could not be serialized: size limit exceeded"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            {
                "status": "ERROR",
                "error": ERROR_MESSAGE,
                "payload": {"detail": [{"msg": ERROR_MESSAGE, "type": "runner_error"}]},
            },
            ERROR_MESSAGE,
            id="error",
        ),
        pytest.param(
            {"status": "OK", "payload": None, "payload_error": PAYLOAD_ERROR},
            PAYLOAD_ERROR,
            id="payload-error",
        ),
    ],
)
async def test_failure_webhooks_fail_the_training_with_fals_message(
    fal: Fal, extra: dict[str, Any], message: str
) -> None:
    training = await make_training(fal.stack)
    rid = request_id_of(training)
    document = {"request_id": rid, "gateway_request_id": rid, **extra}

    response = await fal.deliver(training.id, document)

    assert response.status_code == 200, response.text
    assert await apply_events(fal.stack) == 1
    failed, avatar = await load(fal.stack, training.id)
    assert failed.status is TrainingStatus.failed
    assert failed.error_code == "fal_error"
    assert failed.error_message is not None
    assert message in failed.error_message
    assert failed.lora_url is None
    assert avatar.status is AvatarStatus.failed


async def test_webhook_adopts_the_request_of_a_submission_whose_reply_was_lost(
    fal: Fal,
) -> None:
    training = await make_training(fal.stack, status=TrainingStatus.submitting, submitted=False)
    adopted_id = str(uuid.uuid4())

    response = await fal.deliver(training.id, ok_body(adopted_id))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted"}
    recorded, _ = await load(fal.stack, training.id)
    assert recorded.request_id == adopted_id
    assert recorded.status is TrainingStatus.submitting
    # Only that one request: another request id is still not this training's.
    assert_rejected(await fal.deliver(training.id, ok_body(str(uuid.uuid4()))))
    assert await stored(fal.stack) == (1, 1)

    assert await apply_events(fal.stack) == 1
    done, avatar = await load(fal.stack, training.id)
    assert done.status is TrainingStatus.completed
    assert done.request_id == adopted_id
    assert done.lora_url == LORA_URL
    assert avatar.status is AvatarStatus.completed


async def test_queued_training_adopts_nothing(fal: Fal) -> None:
    # Not yet submitted (or put back after a connect error): no webhook can be ours.
    training = await make_training(fal.stack, status=TrainingStatus.queued, submitted=False)

    response = await fal.deliver(training.id, ok_body(str(uuid.uuid4())))

    assert_rejected(response)
    assert (await load(fal.stack, training.id))[0].request_id is None
    assert await stored(fal.stack) == (0, 0)
