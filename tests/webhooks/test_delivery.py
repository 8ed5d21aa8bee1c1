from __future__ import annotations

import json
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook

from avatar_api.db import session_scope
from avatar_api.models import (
    Job,
    JobStatus,
    Tenant,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)
from avatar_api.settings import Settings
from avatar_api.webhooks.delivery import (
    DISABLED_BY_GONE,
    RETRY_JITTER,
    RETRY_SCHEDULE_SECONDS,
    make_webhook_job_kinds,
    retry_delay,
)
from avatar_api.webhooks.events import (
    DELIVER_JOB_MAX_ATTEMPTS,
    WebhookEventType,
    build_payload,
    emit_event,
)
from avatar_api.webhooks.signing import encrypt_secret, generate_secret
from tests.webhooks.conftest import (
    PUBLIC_V4,
    Clock,
    FakeResolver,
    Received,
    Receiver,
    Reply,
    WorkerFactory,
    deliveries_of,
    delivery_jobs,
    load_endpoint,
    make_pki,
    register,
)

COMPLETED = WebhookEventType.avatar_training_completed
# Later than any retry delay, so the next attempt is due.
A_DAY = 24 * 3600.0


async def emit(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    event_type: WebhookEventType = COMPLETED,
    **data: object,
) -> int:
    async with session_scope(sessionmaker) as session:
        return await emit_event(
            session, tenant_id=tenant_id, event_type=event_type, data=data or {"avatar_id": "a1"}
        )


def verify(secret: str, request: Received) -> dict[str, object]:
    """What a receiver does: check the Standard Webhooks signature, then parse."""
    payload: dict[str, object] = Webhook(secret).verify(request.body, request.headers)
    return payload


async def the_delivery(
    sessionmaker: async_sessionmaker[AsyncSession], endpoint_id: uuid.UUID
) -> WebhookDelivery:
    [delivery] = await deliveries_of(sessionmaker, endpoint_id)
    return delivery


async def test_delivers_a_signed_event(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    assert await emit(wh_sessionmaker, tenant_id, avatar_id="av_1", lora_url="https://x/y") == 1

    assert await make_worker().run_once() == 1

    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["user-agent"].startswith("avatar-api-webhooks/")
    body = verify(endpoint.secret, request)
    assert body["type"] == "avatar.training.completed"
    assert body["data"] == {"avatar_id": "av_1", "lora_url": "https://x/y"}
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert request.headers["webhook-id"] == delivery.event_id
    assert body == delivery.payload
    assert delivery.status is WebhookDeliveryStatus.succeeded
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (1, 204, None)
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.succeeded


async def test_a_forged_or_altered_request_does_not_verify(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    # Guards the verification helper above: it must be able to say no.
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    await make_worker().run_once()
    [request] = receiver.requests
    altered = Received(request.method, request.path, request.headers, request.body + b" ")
    with pytest.raises(Exception, match="signature"):
        verify(endpoint.secret, altered)
    with pytest.raises(Exception, match="signature"):
        verify(generate_secret(), request)


async def test_failure_is_retried_with_the_same_webhook_id_then_succeeds(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
    clock: Clock,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    receiver.script(Reply(500), Reply(200))
    worker = make_worker()

    before = clock()
    assert await worker.run_once() == 1
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert (delivery.attempts, delivery.last_status_code) == (1, 500)
    assert delivery.last_error == "HTTP 500."
    assert delivery.next_attempt_at is not None
    first_delay = RETRY_SCHEDULE_SECONDS[0]
    assert (
        before + timedelta(seconds=first_delay * (1 - RETRY_JITTER))
        <= delivery.next_attempt_at
        <= clock() + timedelta(seconds=first_delay * (1 + RETRY_JITTER))
    )
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.pending
    assert job.run_at == pytest.approx(delivery.next_attempt_at, abs=timedelta(seconds=1))
    # Not due yet: nothing is claimed and nothing is sent.
    assert await worker.run_once() == 0
    assert len(receiver.requests) == 1

    clock.advance(A_DAY)
    assert await worker.run_once() == 1
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert verify(endpoint.secret, first) == verify(endpoint.secret, second)
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.succeeded
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (2, 200, None)
    assert delivery.event_id == first.headers["webhook-id"]


async def test_gives_up_after_the_configured_attempts(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
    clock: Clock,
) -> None:
    assert delivery_settings.webhook_max_attempts == 3
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    receiver.script(*[Reply(503)] * 5)
    worker = make_worker()
    for _ in range(3):
        assert await worker.run_once() == 1
        clock.advance(A_DAY)
    assert await worker.run_once() == 0

    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.failed
    assert (delivery.attempts, delivery.last_status_code) == (3, 503)
    assert delivery.last_error == "HTTP 503."
    assert delivery.next_attempt_at is None
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.failed
    assert job.last_error is not None
    assert "Gave up after 3 attempts" in job.last_error


async def test_gone_disables_the_endpoint(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id, avatar_id="first")
    await emit(wh_sessionmaker, tenant_id, avatar_id="second")
    receiver.script(Reply(410))
    worker = make_worker()

    assert await worker.run_once() == 1
    stored = await load_endpoint(wh_sessionmaker, endpoint.id)
    assert (stored.enabled, stored.disabled_reason) == (False, DISABLED_BY_GONE)
    first, second = await deliveries_of(wh_sessionmaker, endpoint.id)
    assert first.status is WebhookDeliveryStatus.failed
    assert (first.attempts, first.last_status_code) == (1, 410)
    assert second.status is WebhookDeliveryStatus.pending

    # The delivery queued before the 410 is dropped without a request.
    assert await worker.run_once() == 1
    assert len(receiver.requests) == 1
    second = (await deliveries_of(wh_sessionmaker, endpoint.id))[1]
    assert second.status is WebhookDeliveryStatus.failed
    assert second.attempts == 0
    assert second.last_error is not None
    assert "disabled" in second.last_error
    assert {job.status for job in await delivery_jobs(wh_sessionmaker)} == {JobStatus.succeeded}
    # And new events no longer go to it.
    assert await emit(wh_sessionmaker, tenant_id) == 0


async def test_redirects_are_not_followed(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    receiver.script(Reply(302, headers={"Location": receiver.url("/elsewhere")}))

    assert await make_worker().run_once() == 1

    assert [r.path for r in receiver.requests] == ["/hook"]
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert delivery.last_status_code == 302
    assert delivery.last_error is not None
    assert "redirects are not followed" in delivery.last_error
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.pending


async def test_a_slow_receiver_times_out_and_is_retried(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
    clock: Clock,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    receiver.script(Reply(200, delay=5.0), Reply(200))
    worker = make_worker()

    assert await worker.run_once() == 1
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert delivery.last_status_code is None
    assert delivery.last_error == "No response within 0.5 s."

    clock.advance(A_DAY)
    assert await worker.run_once() == 1
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.succeeded
    assert delivery.attempts == 2


async def test_connection_refused_is_retried(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    url = receiver.url()
    await receiver.stop()  # nothing listens on that port any more
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=url, settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)

    assert await make_worker().run_once() == 1

    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("Could not connect: 127.0.0.1:")


async def test_connects_to_the_vetted_address_and_keeps_the_host_name(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    # ".invalid" never resolves in real DNS (RFC 6761): the request can only arrive if the
    # sender connected to the address our resolver vetted instead of resolving again.
    resolver = FakeResolver({"hooks.invalid": ["127.0.0.1"]})
    url = receiver.url(host="hooks.invalid")
    endpoint = await register(
        wh_sessionmaker,
        tenant_id=tenant_id,
        url=url,
        settings=delivery_settings,
        resolver=resolver,
    )
    await emit(wh_sessionmaker, tenant_id)

    assert await make_worker(make_webhook_job_kinds(resolver=resolver)).run_once() == 1

    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.invalid:{receiver.port}"
    verify(endpoint.secret, request)
    # Checked at registration and again right before sending.
    assert resolver.calls == [("hooks.invalid", receiver.port)] * 2
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.succeeded


async def test_dns_rebinding_after_registration_is_refused_at_send_time(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    strict = delivery_settings.model_copy(update={"webhook_allow_private_targets": False})
    resolver = FakeResolver({"rebind.example.com": [PUBLIC_V4]})
    endpoint = await register(
        wh_sessionmaker,
        tenant_id=tenant_id,
        url=f"http://rebind.example.com:{receiver.port}/hook",
        settings=strict,
        resolver=resolver,
    )
    await emit(wh_sessionmaker, tenant_id)
    resolver.set("rebind.example.com", "127.0.0.1")

    worker = make_worker(make_webhook_job_kinds(resolver=resolver), settings=strict)
    assert await worker.run_once() == 1

    assert receiver.requests == []
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert delivery.last_status_code is None
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("Target refused: rebind.example.com resolves to 127")
    assert "loopback" in delivery.last_error


async def test_https_is_pinned_and_still_verifies_the_host_name(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    make_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", "hooks.test")
    receiver = Receiver(ssl_context=pki.server_context())
    await receiver.start()
    try:
        resolver = FakeResolver({"hooks.test": ["127.0.0.1"]})
        endpoint = await register(
            wh_sessionmaker,
            tenant_id=tenant_id,
            url=receiver.url(host="hooks.test"),
            settings=delivery_settings,
            resolver=resolver,
        )
        await emit(wh_sessionmaker, tenant_id)
        kinds = make_webhook_job_kinds(resolver=resolver, ssl_context=pki.client_context())
        assert await make_worker(kinds).run_once() == 1
    finally:
        await receiver.stop()

    # The certificate names hooks.test, not 127.0.0.1: the handshake only succeeded
    # because SNI and verification used the host name while the socket went to the IP.
    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    verify(endpoint.secret, request)
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.succeeded


async def test_https_certificate_for_another_name_is_refused(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    make_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", "someone-else.test")
    receiver = Receiver(ssl_context=pki.server_context())
    await receiver.start()
    try:
        resolver = FakeResolver({"hooks.test": ["127.0.0.1"]})
        endpoint = await register(
            wh_sessionmaker,
            tenant_id=tenant_id,
            url=receiver.url(host="hooks.test"),
            settings=delivery_settings,
            resolver=resolver,
        )
        await emit(wh_sessionmaker, tenant_id)
        kinds = make_webhook_job_kinds(resolver=resolver, ssl_context=pki.client_context())
        assert await make_worker(kinds).run_once() == 1
    finally:
        await receiver.stop()

    assert receiver.requests == []
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.pending
    assert delivery.last_error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error


async def test_deleting_the_endpoint_drops_its_queued_deliveries(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=delivery_settings
    )
    await emit(wh_sessionmaker, tenant_id)
    async with session_scope(wh_sessionmaker) as session:
        stored = await session.get(WebhookEndpoint, endpoint.id)
        await session.delete(stored)

    assert await make_worker().run_once() == 1

    assert receiver.requests == []
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.succeeded


async def test_an_unreadable_secret_fails_the_delivery_without_sending(
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    delivery_settings: Settings,
    tenant_id: uuid.UUID,
    receiver: Receiver,
    make_worker: WorkerFactory,
) -> None:
    # Registered under another AVATAR_SECRET_KEY than the worker has.
    rotated = delivery_settings.model_copy(update={"secret_key": SecretStr("k" * 40)})
    endpoint = await register(
        wh_sessionmaker, tenant_id=tenant_id, url=receiver.url(), settings=rotated
    )
    await emit(wh_sessionmaker, tenant_id)

    assert await make_worker().run_once() == 1

    assert receiver.requests == []
    delivery = await the_delivery(wh_sessionmaker, endpoint.id)
    assert delivery.status is WebhookDeliveryStatus.failed
    assert delivery.last_error is not None
    assert "webhook_secret_unreadable" in delivery.last_error
    [job] = await delivery_jobs(wh_sessionmaker)
    assert job.status is JobStatus.failed


# --- emit_event, in the caller's transaction ---


async def _tenant(session: AsyncSession) -> uuid.UUID:
    tenant = Tenant(name=f"emit-{uuid.uuid4().hex[:8]}")
    session.add(tenant)
    await session.flush()
    return tenant.id


async def _endpoint(
    session: AsyncSession, tenant_id: uuid.UUID, *events: str, enabled: bool = True
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url="https://hooks.example.com/x",
        events=list(events),
        encrypted_secret=encrypt_secret(generate_secret(), key=SecretStr("k" * 40)),
        enabled=enabled,
    )
    session.add(endpoint)
    await session.flush()
    return endpoint


async def test_emit_event_queues_one_delivery_per_subscribed_enabled_endpoint(
    session: AsyncSession,
) -> None:
    tenant_id = await _tenant(session)
    other_tenant_id = await _tenant(session)
    completed, failed = COMPLETED.value, WebhookEventType.avatar_training_failed.value
    first = await _endpoint(session, tenant_id, completed)
    second = await _endpoint(session, tenant_id, failed, completed)
    await _endpoint(session, tenant_id, failed)
    await _endpoint(session, tenant_id, completed, enabled=False)
    await _endpoint(session, other_tenant_id, completed)

    created_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    count = await emit_event(
        session,
        tenant_id=tenant_id,
        event_type=COMPLETED,
        data={"avatar_id": uuid.UUID(int=7), "finished_at": created_at, "steps": 1000},
    )

    assert count == 2
    deliveries = (
        await session.exec(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id))
    ).all()
    assert {d.endpoint_id for d in deliveries} == {first.id, second.id}
    # One event: the same webhook-id and body for every endpoint.
    assert len({d.event_id for d in deliveries}) == 1
    assert deliveries[0].payload == deliveries[1].payload
    payload = deliveries[0].payload
    assert payload["type"] == "avatar.training.completed"
    assert payload["data"] == {
        "avatar_id": str(uuid.UUID(int=7)),
        "finished_at": "2026-01-02T03:04:05Z",
        "steps": 1000,
    }
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert {d.status for d in deliveries} == {WebhookDeliveryStatus.pending}
    jobs = (
        await session.exec(
            select(Job).where(
                col(Job.kind) == "webhook.deliver",
                col(Job.status) == JobStatus.pending,
            )
        )
    ).all()
    assert sorted(job.payload["delivery_id"] for job in jobs) == sorted(
        str(d.id) for d in deliveries
    )
    assert {job.max_attempts for job in jobs} == {DELIVER_JOB_MAX_ATTEMPTS}

    assert (
        await emit_event(
            session, tenant_id=tenant_id, event_type=WebhookEventType.avatar_deleted, data={}
        )
        == 0
    )


async def test_emit_event_rolls_back_with_the_caller(session: AsyncSession) -> None:
    tenant_id = await _tenant(session)
    await _endpoint(session, tenant_id, COMPLETED.value)
    await session.commit()  # the fixture's savepoint: tenant and endpoint stay

    assert await emit_event(session, tenant_id=tenant_id, event_type=COMPLETED, data={}) == 1
    await session.rollback()

    count = select(func.count()).select_from(WebhookDelivery)
    assert (await session.exec(count.where(WebhookDelivery.tenant_id == tenant_id))).one() == 0
    jobs = select(func.count()).select_from(Job).where(col(Job.kind) == "webhook.deliver")
    assert (await session.exec(jobs)).one() == 0


@pytest.mark.parametrize("data", [{"x": math.nan}, {"x": [math.inf]}, {"x": object()}])
def test_payload_data_must_be_json(data: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        build_payload(COMPLETED, data, now=datetime.now(UTC))


def test_payload_is_json_with_utc_timestamp() -> None:
    now = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    payload = build_payload(COMPLETED, {"n": 1}, now=now)
    assert payload == {
        "type": "avatar.training.completed",
        "timestamp": "2026-05-06T07:08:09.123456Z",
        "data": {"n": 1},
    }
    assert json.loads(json.dumps(payload)) == payload


# --- the retry schedule ---


class _Edge(random.Random):
    def __init__(self, high: bool) -> None:
        super().__init__()
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_default_retry_schedule_spans_about_a_day() -> None:
    attempts = Settings(_env_file=None).webhook_max_attempts
    waits = range(1, attempts)  # a delay after every failed attempt but the last
    shortest = sum(retry_delay(n, rng=_Edge(high=False)) for n in waits)
    longest = sum(retry_delay(n, rng=_Edge(high=True)) for n in waits)
    assert 20 * 3600 <= shortest <= longest <= 36 * 3600
    assert retry_delay(1, rng=_Edge(high=False)) < 10  # the first retry comes quickly


def test_retry_delays_are_jittered_around_the_schedule() -> None:
    rng = random.Random(1)
    for attempt in (1, 4, 7, 50):
        base = RETRY_SCHEDULE_SECONDS[min(attempt, len(RETRY_SCHEDULE_SECONDS)) - 1]
        delays = {retry_delay(attempt, rng=rng) for _ in range(20)}
        assert len(delays) > 1
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)


def test_the_job_cap_never_preempts_the_setting() -> None:
    bound = Settings.model_fields["webhook_max_attempts"].metadata
    maximum = next(m.le for m in bound if getattr(m, "le", None) is not None)
    assert maximum < DELIVER_JOB_MAX_ATTEMPTS
