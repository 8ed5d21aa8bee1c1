"""Fixtures for the job engine: real commits on the migrated test database.

The engine needs several connections and real commits (a claim, the handler's transaction,
a heartbeat, another worker), so these tests cannot run inside the shared rolled-back
connection. Instead each test gets its own engine on the same database and starts and
ends with an empty jobs table and a fresh side table for handler effects.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Column, MetaData, String, Table, delete, func, insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import create_engine, create_sessionmaker, session_scope, utcnow
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobKind, JobRegistry
from avatar_api.jobs.worker import Worker
from avatar_api.models.job import Job
from avatar_api.services import Services
from avatar_api.settings import Settings
from avatar_api.storage.local import LocalStorage
from tests.conftest import make_settings
from tests.fakes import RecordingGateway

# A separate MetaData: the table must stay out of SQLModel.metadata, which
# test_migrations compares with the migrated schema. No unique key on purpose: effects
# that commit twice must show up as two rows, not hide behind a constraint and a retry.
_test_metadata = MetaData()
effects_table = Table(
    "job_test_effects",
    _test_metadata,
    Column("ref", String(64), nullable=False),
    Column("tag", String(200), nullable=False),
)


@dataclass
class Clock:
    """Real time plus an offset the test can move forward."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


async def _reset(engine: AsyncEngine, *, recreate: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(Job))
        await conn.run_sync(_test_metadata.drop_all)
        if recreate:
            await conn.run_sync(_test_metadata.create_all)


@pytest.fixture
async def job_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url=database_url, database_pool_size=40))
    await _reset(engine, recreate=True)
    try:
        yield engine
    finally:
        # test_migrations compares this database with the models: leave no extra table.
        await _reset(engine, recreate=False)
        await engine.dispose()


@pytest.fixture
def job_sessionmaker(job_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(job_engine)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def services(
    settings: Settings,
    job_sessionmaker: async_sessionmaker[AsyncSession],
    clock: Clock,
    tmp_path: Path,
) -> AsyncIterator[Services]:
    async with httpx.AsyncClient() as http:
        yield Services(
            settings=settings,
            sessionmaker=job_sessionmaker,
            storage=LocalStorage(
                tmp_path / "storage",
                public_base_url="http://test",
                signing_secret=b"jobs-test-secret",
            ),
            gateway=RecordingGateway(),
            http=http,
            clock=clock,
        )


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def make_worker(services: Services) -> WorkerFactory:
    def make(*kinds: JobKind, **options: Any) -> Worker:
        values: dict[str, Any] = {
            "concurrency": 4,
            "lease_seconds": 30,
            "poll_interval": 0.05,
            "shutdown_grace_seconds": 2.0,
        }
        values.update(options)
        return Worker(services=services, registry=JobRegistry(kinds), **values)

    return make


async def add_job(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    kind: str = "test.job",
    payload: dict[str, object] | None = None,
    **options: Any,
) -> Job:
    """Enqueue one job and commit it."""
    async with session_scope(sessionmaker) as session:
        return await enqueue(
            session, kind=kind, payload=payload or {"ref": uuid.uuid4().hex}, **options
        )


async def load_job(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    async with sessionmaker() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def record_effect(session: AsyncSession, ref: str, tag: str = "") -> None:
    await session.exec(insert(effects_table).values(ref=ref, tag=tag))


async def effects(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[str, str]]:
    async with sessionmaker() as session:
        rows = await session.exec(
            select(effects_table.c.ref, effects_table.c.tag).order_by(
                effects_table.c.ref, effects_table.c.tag
            )
        )
        return [(ref, tag) for ref, tag in rows.all()]


async def count_effects(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """(rows, distinct refs) in the effects table."""
    async with sessionmaker() as session:
        total, distinct = (
            await session.exec(select(func.count(), func.count(func.distinct(effects_table.c.ref))))
        ).one()
        return int(total), int(distinct)
