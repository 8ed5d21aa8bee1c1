"""Per-tenant training quotas: refused with 429 before anything is queued for fal."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.app import create_app
from avatar_api.auth.service import Principal, authenticate, create_api_key
from avatar_api.db import create_sessionmaker, session_scope, utcnow
from avatar_api.models import (
    Avatar,
    AvatarStatus,
    Job,
    Photo,
    Tenant,
    Training,
    TrainingStatus,
    TrainingType,
)
from avatar_api.quotas import (
    ConcurrentTrainingsQuotaExceeded,
    DailyTrainingsQuotaExceeded,
    charge_training_start,
    check_training_quotas,
)
from avatar_api.services import Services
from avatar_api.settings import Settings
from avatar_api.storage.local import LocalStorage
from avatar_api.training.schemas import TrainingStart
from avatar_api.training.service import SUBMIT_JOB, start_training
from tests.conftest import make_settings
from tests.fakes import RecordingGateway


async def make_avatar(session: AsyncSession, tenant_id: uuid.UUID, *, photos: int = 1) -> Avatar:
    avatar = Avatar(
        tenant_id=tenant_id,
        name="Quota",
        training_type=TrainingType.portrait,
        trigger_phrase="PERSON_QUOTA",
    )
    session.add(avatar)
    await session.flush()
    for i in range(photos):
        session.add(
            Photo(
                tenant_id=tenant_id,
                avatar_id=avatar.id,
                filename=f"p{i}.jpg",
                storage_key=f"tenants/{tenant_id}/avatars/{avatar.id}/photos/{i}.jpg",
                source_format="jpeg",
                width=1024,
                height=1024,
                size_bytes=1000,
                sha256=f"{i:064x}",
                phash=f"{i:016x}",
            )
        )
    await session.flush()
    return avatar


async def make_training(
    session: AsyncSession,
    avatar: Avatar,
    *,
    status: TrainingStatus,
    created_at: datetime | None = None,
) -> Training:
    attempt = 1 + int(
        (
            await session.exec(
                select(func.count()).select_from(Training).where(Training.avatar_id == avatar.id)
            )
        ).one()
    )
    training = Training(
        tenant_id=avatar.tenant_id,
        avatar_id=avatar.id,
        attempt=attempt,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        test_mode=True,
        status=status,
        created_at=created_at or utcnow(),
    )
    session.add(training)
    charge_training_start(session, tenant_id=avatar.tenant_id, now=training.created_at)
    await session.flush()
    return training


def quota_settings(database_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "storage_local_root": tmp_path / "storage",
        "portrait_min_photos": 1,
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
async def principal(session: AsyncSession, api_key: str) -> Principal:
    return await authenticate(session, secret=api_key)


async def start(client: httpx.AsyncClient, avatar: Avatar) -> httpx.Response:
    return await client.post(f"/v1/avatars/{avatar.id}/training", json={})


async def submit_jobs(session: AsyncSession) -> int:
    result = await session.exec(
        select(func.count()).select_from(Job).where(col(Job.kind) == SUBMIT_JOB)
    )
    return int(result.one())


async def test_the_concurrency_quota_refuses_before_anything_is_queued(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    api_key: str,
    other_api_key: str,
    principal: Principal,
) -> None:
    settings = quota_settings(database_url, tmp_path, quota_concurrent_trainings=1)
    app = create_app(settings, sessionmaker=sessionmaker, gateway=RecordingGateway())
    first = await make_avatar(session, principal.tenant_id)
    second = await make_avatar(session, principal.tenant_id)
    other = await authenticate(session, secret=other_api_key)
    elsewhere = await make_avatar(session, other.tenant_id)
    await session.commit()

    async with _client(app, api_key) as client, _client(app, other_api_key) as other_client:
        assert (await start(client, first)).status_code == 202
        jobs_before = await submit_jobs(session)
        refused = await start(client, second)
        assert refused.status_code == 429
        problem = refused.json()
        assert problem["code"] == "quota_concurrent_trainings"
        assert "1 of your trainings are queued or running" in problem["detail"]
        assert refused.headers["content-type"] == "application/problem+json"
        # Nothing was recorded or queued for fal.
        await session.refresh(second)
        assert second.status is AvatarStatus.draft
        assert await submit_jobs(session) == jobs_before
        assert (
            await session.exec(select(Training).where(Training.avatar_id == second.id))
        ).first() is None
        # Another tenant's quota is its own.
        assert (await start(other_client, elsewhere)).status_code == 202

        # Once the first training ends, the slot is free again.
        running = (await session.exec(select(Training).where(Training.avatar_id == first.id))).one()
        running.status = TrainingStatus.failed
        session.add(running)
        await session.commit()
        assert (await start(client, second)).status_code == 202


async def test_the_daily_quota_counts_24_hours_and_says_when_to_retry(
    database_url: str, tmp_path: Path, session: AsyncSession, principal: Principal
) -> None:
    settings = quota_settings(
        database_url, tmp_path, quota_trainings_per_day=3, quota_concurrent_trainings=0
    )
    now = utcnow()
    avatar = await make_avatar(session, principal.tenant_id)
    await make_training(
        session, avatar, status=TrainingStatus.completed, created_at=now - timedelta(hours=25)
    )
    for hours in (23, 2, 1):  # failed ones count too: they were submitted
        await make_training(
            session, avatar, status=TrainingStatus.failed, created_at=now - timedelta(hours=hours)
        )

    with pytest.raises(DailyTrainingsQuotaExceeded) as refused:
        await check_training_quotas(
            session, settings=settings, tenant_id=principal.tenant_id, now=now
        )
    assert refused.value.code == "quota_daily_trainings"
    assert refused.value.status_code == 429
    # The training from 23 h ago leaves the window in 1 h.
    assert refused.value.headers["Retry-After"] == "3600"
    assert "3 trainings in the last 24 hours" in str(refused.value.detail)

    await check_training_quotas(
        session,
        settings=settings,
        tenant_id=principal.tenant_id,
        now=now + timedelta(hours=1, seconds=1),
    )
    unlimited = settings.model_copy(update={"quota_trainings_per_day": 0})
    await check_training_quotas(session, settings=unlimited, tenant_id=principal.tenant_id, now=now)


async def test_the_daily_quota_over_http(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    api_key: str,
    principal: Principal,
) -> None:
    settings = quota_settings(database_url, tmp_path, quota_trainings_per_day=2)
    app = create_app(settings, sessionmaker=sessionmaker, gateway=RecordingGateway())
    done = await make_avatar(session, principal.tenant_id)
    for _ in range(2):
        await make_training(session, done, status=TrainingStatus.completed)
    fresh = await make_avatar(session, principal.tenant_id)
    await session.commit()
    async with _client(app, api_key) as client:
        refused = await start(client, fresh)
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_daily_trainings"
    assert 24 * 3600 - 60 <= int(refused.headers["Retry-After"]) <= 24 * 3600


async def test_erasing_an_avatar_does_not_give_the_daily_quota_back(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    api_key: str,
    principal: Principal,
) -> None:
    settings = quota_settings(
        database_url, tmp_path, quota_trainings_per_day=1, quota_concurrent_trainings=0
    )
    app = create_app(settings, sessionmaker=sessionmaker, gateway=RecordingGateway())
    first = await make_avatar(session, principal.tenant_id)
    second = await make_avatar(session, principal.tenant_id)
    await session.commit()
    async with _client(app, api_key) as client:
        assert (await start(client, first)).status_code == 202
        # Train, erase, train again: the erased training still counts.
        assert (await client.delete(f"/v1/avatars/{first.id}")).status_code in (200, 202, 204)
        assert (
            await session.exec(select(Training).where(Training.avatar_id == first.id))
        ).first() is None
        refused = await start(client, second)
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_daily_trainings"


async def test_the_concurrency_quota_counts_every_active_status(
    database_url: str, tmp_path: Path, session: AsyncSession, principal: Principal
) -> None:
    settings = quota_settings(
        database_url, tmp_path, quota_concurrent_trainings=4, quota_trainings_per_day=0
    )
    avatar = await make_avatar(session, principal.tenant_id)
    for status in (TrainingStatus.completed, TrainingStatus.cancelled, TrainingStatus.failed):
        await make_training(session, avatar, status=status)
    await check_training_quotas(session, settings=settings, tenant_id=principal.tenant_id)
    active = (
        TrainingStatus.queued,
        TrainingStatus.submitting,
        TrainingStatus.in_queue,
        TrainingStatus.in_progress,
    )
    for status in active:
        await make_training(session, avatar, status=status)
    with pytest.raises(ConcurrentTrainingsQuotaExceeded):
        await check_training_quotas(session, settings=settings, tenant_id=principal.tenant_id)


@pytest.fixture
async def committed_tenant(engine: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    """A tenant whose rows really commit (for concurrent transactions); deleted afterwards."""
    maker = create_sessionmaker(engine)
    async with session_scope(maker) as session:
        issued = await create_api_key(session, tenant_name=f"quota-race-{uuid.uuid4().hex[:8]}")
    tenant_id = issued.tenant.id
    try:
        yield tenant_id
    finally:
        async with session_scope(maker) as session:
            mine = select(Training.id).where(col(Training.tenant_id) == tenant_id)
            ids = [str(t) for t in (await session.exec(mine)).all()]
            await session.exec(
                delete(Job).where(col(Job.dedupe_key).in_([f"submit:{i}" for i in ids]))
            )
            await session.exec(delete(Tenant).where(col(Tenant.id) == tenant_id))


async def test_concurrent_starts_of_one_tenant_cannot_both_pass(
    engine: AsyncEngine, committed_tenant: uuid.UUID, tmp_path: Path, database_url: str
) -> None:
    settings = quota_settings(database_url, tmp_path, quota_concurrent_trainings=1)
    maker = create_sessionmaker(engine)
    async with session_scope(maker) as session:
        avatars = [await make_avatar(session, committed_tenant) for _ in range(2)]
    principal = Principal(tenant_id=committed_tenant, api_key_id=uuid.uuid4())
    async with httpx.AsyncClient() as http:
        services = Services(
            settings=settings,
            sessionmaker=maker,
            storage=LocalStorage(
                tmp_path / "storage", public_base_url="http://test", signing_secret=b"x" * 32
            ),
            gateway=RecordingGateway(),
            http=http,
        )

        async def attempt(avatar: Avatar) -> str:
            try:
                async with session_scope(maker) as session:
                    await start_training(
                        session,
                        services=services,
                        principal=principal,
                        avatar_id=avatar.id,
                        data=TrainingStart(),
                    )
            except ConcurrentTrainingsQuotaExceeded:
                return "refused"
            return "started"

        outcomes = await asyncio.gather(*(attempt(a) for a in avatars))
    assert sorted(outcomes) == ["refused", "started"]


def _client(app: FastAPI, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {key}"},
    )
