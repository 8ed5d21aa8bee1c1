"""GET /metrics: protected, Prometheus format, process and scrape-time database metrics."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.app import create_app
from avatar_api.db import create_engine, create_sessionmaker, utcnow
from avatar_api.fal.client import FalClientGateway
from avatar_api.fal.gateway import FalCredentialsMissing, FalPermanentError
from avatar_api.fal.simulator import SimulatorGateway
from avatar_api.jobs.queue import enqueue
from avatar_api.models import (
    Avatar,
    AvatarStatus,
    Job,
    JobStatus,
    Training,
    TrainingStatus,
    TrainingType,
)
from avatar_api.observability.collector import DatabaseCollector, take_snapshot
from avatar_api.observability.exporter import start_metrics_server
from avatar_api.settings import Settings, UnsafeConfiguration
from avatar_api.training.state import set_training_status
from tests.conftest import make_settings
from tests.fakes import RecordingGateway

TOKEN = "metrics-" + "t" * 32


def sample(body: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics_app(
    database_url: str, tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> FastAPI:
    settings = make_settings(
        database_url=database_url, storage_local_root=tmp_path / "storage", metrics_token=TOKEN
    )
    app = create_app(settings, sessionmaker=sessionmaker, gateway=RecordingGateway())
    app.state.metrics_collector.ttl_seconds = 0  # every scrape queries
    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_metrics_are_closed_without_a_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "/metrics" not in app.openapi()["paths"]


async def test_only_the_metrics_token_opens_them(metrics_app: FastAPI, api_key: str) -> None:
    async with client_for(metrics_app) as client:
        for headers in (
            {},
            {"Authorization": f"Bearer {api_key}"},  # a tenant's API key never does
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "unauthorized"
        body = await scrape(client)
    assert "avatar_http_requests_total" in body
    assert sample(body, "avatar_metrics_database_up") == 1.0
    assert "/metrics" not in metrics_app.openapi()["paths"]


async def test_http_metrics_count_route_templates(metrics_app: FastAPI, api_key: str) -> None:
    route = "/v1/avatars/{avatar_id}"
    before = value("avatar_http_requests_total", method="GET", route=route, status="404")
    seconds_before = value("avatar_http_request_duration_seconds_count", method="GET", route=route)
    missing = uuid.uuid4()
    async with client_for(metrics_app) as client:
        headers = {"Authorization": f"Bearer {api_key}"}
        for _ in range(2):
            assert (await client.get(f"/v1/avatars/{missing}", headers=headers)).status_code == 404
        assert (await client.get("/no/such/thing")).status_code == 404
        body = await scrape(client)
    assert (
        sample(body, "avatar_http_requests_total", method="GET", route=route, status="404")
        == before + 2
    )
    assert (
        sample(body, "avatar_http_request_duration_seconds_count", method="GET", route=route)
        == seconds_before + 2
    )
    assert sample(body, "avatar_http_requests_total", route="unmatched", status="404")
    assert str(missing) not in body  # raw paths never become labels


async def make_avatar(session: AsyncSession) -> Avatar:
    from avatar_api.auth.service import create_api_key

    issued = await create_api_key(session, tenant_name=f"metrics-{uuid.uuid4().hex[:8]}")
    avatar = Avatar(
        tenant_id=issued.tenant.id,
        name="Metrics",
        training_type=TrainingType.portrait,
        trigger_phrase="PERSON_METRICS",
    )
    session.add(avatar)
    await session.flush()
    return avatar


def make_training(
    avatar: Avatar, attempt: int, status: TrainingStatus, *, created_at: datetime | None = None
) -> Training:
    return Training(
        tenant_id=avatar.tenant_id,
        avatar_id=avatar.id,
        attempt=attempt,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        test_mode=True,
        status=status,
        created_at=created_at or utcnow(),
    )


async def test_trainings_and_the_job_queue_are_read_at_scrape_time(
    metrics_app: FastAPI, session: AsyncSession
) -> None:
    baseline = await take_snapshot(session, now=utcnow())
    avatar = await make_avatar(session)
    statuses = [TrainingStatus.queued, TrainingStatus.in_progress, TrainingStatus.completed]
    for attempt, status in enumerate(statuses, start=1):
        session.add(make_training(avatar, attempt, status))
    now = utcnow()
    await enqueue(session, kind="ops.metrics_due", payload={}, run_at=now - timedelta(seconds=120))
    await enqueue(session, kind="ops.metrics_due", payload={}, run_at=now - timedelta(seconds=5))
    await enqueue(session, kind="ops.metrics_later", payload={}, run_at=now + timedelta(hours=1))
    session.add(
        Job(
            kind="ops.metrics_running",
            status=JobStatus.running,
            locked_until=now - timedelta(seconds=1),
        )
    )
    session.add(Job(kind="ops.metrics_failed", status=JobStatus.failed))
    await session.commit()

    async with client_for(metrics_app) as client:
        body = await scrape(client)

    def trainings(status: str) -> float | None:
        return sample(body, "avatar_trainings", status=status, type="portrait")

    for name in ("queued", "in_progress", "completed"):
        assert trainings(name) == baseline.trainings[(name, "portrait")] + 1
    assert trainings("failed") == baseline.trainings[("failed", "portrait")]
    assert sample(body, "avatar_jobs_due", kind="ops.metrics_due") == 2
    assert sample(body, "avatar_jobs_due", kind="ops.metrics_later") is None  # not due yet
    assert sample(body, "avatar_jobs_running", kind="ops.metrics_running") == 1
    assert sample(body, "avatar_jobs_expired_leases") == baseline.jobs_expired_leases + 1
    assert sample(body, "avatar_jobs_failed") == baseline.jobs_failed + 1
    oldest = sample(body, "avatar_jobs_oldest_due_age_seconds")
    assert oldest is not None
    assert oldest >= 119


async def test_the_database_query_is_cached_and_survives_an_outage(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    clock = [100.0]
    collector = DatabaseCollector(ttl_seconds=10, monotonic=lambda: clock[0])
    registry_body = _render(collector)
    assert "avatar_trainings" not in registry_body  # nothing queried yet
    await collector.refresh(sessionmaker)
    first = _sample_of(collector, "avatar_jobs_due", kind="ops.cached")
    await enqueue(session, kind="ops.cached", payload={})
    await session.commit()
    clock[0] += 5
    await collector.refresh(sessionmaker)
    assert _sample_of(collector, "avatar_jobs_due", kind="ops.cached") == first  # cached
    clock[0] += 6
    await collector.refresh(sessionmaker)
    assert _sample_of(collector, "avatar_jobs_due", kind="ops.cached") == 1

    unreachable = create_engine(
        make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
    )
    down = DatabaseCollector()
    await down.refresh(create_sessionmaker(unreachable))
    await unreachable.dispose()
    families = {f.name for f in down.collect()}
    assert families == {"avatar_metrics_database_up"}
    assert _sample_of(down, "avatar_metrics_database_up") == 0


def _render(collector: DatabaseCollector) -> str:
    return "\n".join(f.name for f in collector.collect())


def _sample_of(collector: DatabaseCollector, name: str, **labels: str) -> float | None:
    for family in collector.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_training_durations_are_observed_once_committed(session: AsyncSession) -> None:
    labels = {"type": "portrait", "status": "completed"}
    count = "avatar_training_duration_seconds_count"
    total = "avatar_training_duration_seconds_sum"
    avatar = await make_avatar(session)
    avatar.status = AvatarStatus.training
    session.add(avatar)
    started = utcnow() - timedelta(seconds=90)
    await session.commit()

    rolled_back = make_training(avatar, 1, TrainingStatus.in_progress, created_at=started)
    session.add(rolled_back)
    await session.flush()
    before = value(count, **labels)
    await set_training_status(session, rolled_back, avatar, TrainingStatus.completed)
    await session.rollback()
    assert value(count, **labels) == before  # a transition that never committed
    await session.refresh(avatar)

    kept = make_training(avatar, 1, TrainingStatus.in_progress, created_at=started)
    session.add(kept)
    await session.flush()
    sum_before = value(total, **labels)
    await set_training_status(session, kept, avatar, TrainingStatus.completed)
    assert value(count, **labels) == before  # not before the commit
    await session.commit()
    assert value(count, **labels) == before + 1
    assert 89 <= value(total, **labels) - sum_before <= 120


async def test_fal_calls_are_counted_for_both_backends(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    simulated = {"backend": "simulator", "operation": "status", "outcome": "permanent_error"}
    real = {"backend": "fal", "operation": "submit", "outcome": "credentials_missing"}
    before = (value("avatar_fal_calls_total", **simulated), value("avatar_fal_calls_total", **real))
    seconds_before = value(
        "avatar_fal_call_duration_seconds_count", backend="simulator", operation="status"
    )

    simulator = SimulatorGateway(settings=settings, sessionmaker=sessionmaker)
    with pytest.raises(FalPermanentError):
        await simulator.status("fal-ai/flux-lora-portrait-trainer", "no-such-request")
    async with httpx.AsyncClient() as http:
        gateway = FalClientGateway(None, http_client=http, timeout=5)
        with pytest.raises(FalCredentialsMissing):
            await gateway.submit("fal-ai/flux-lora-portrait-trainer", {}, webhook_url=None)

    assert value("avatar_fal_calls_total", **simulated) == before[0] + 1
    assert value("avatar_fal_calls_total", **real) == before[1] + 1
    assert (
        value("avatar_fal_call_duration_seconds_count", backend="simulator", operation="status")
        == seconds_before + 1
    )


async def test_fal_webhook_verifications_are_counted(client: httpx.AsyncClient) -> None:
    before = value("avatar_fal_webhooks_total", result="missing_headers")
    response = await client.post(f"/v1/webhooks/fal/{uuid.uuid4()}/token", json={})
    assert response.status_code == 401
    assert value("avatar_fal_webhooks_total", result="missing_headers") == before + 1


async def test_the_separate_metrics_port_serves_without_a_token(settings: Settings) -> None:
    server = start_metrics_server(settings.model_copy(update={"metrics_host": "127.0.0.1"}), port=0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        response = await asyncio.to_thread(httpx.get, url, timeout=10)
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
    assert response.status_code == 200
    assert sample(response.text, "avatar_metrics_database_up") == 1.0
    assert sample(response.text, "avatar_trainings", status="queued", type="portrait") is not None
    assert "process_cpu_seconds_total" in response.text or "python_info" in response.text


def test_production_refuses_a_guessable_metrics_token(tmp_path: Path) -> None:
    production = Settings(
        _env_file=None,
        environment="production",
        secret_key="x" * 40,
        public_base_url="https://avatars.example.com",
        fal_key="id:secret",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        storage_local_root=tmp_path,
        metrics_token="short",
    )
    with pytest.raises(UnsafeConfiguration, match="AVATAR_METRICS_TOKEN"):
        create_app(production)
    create_app(production.model_copy(update={"metrics_token": None}))
