"""Shared fixtures: one database per backend, each test in a rolled-back transaction.

Database tests run on SQLite always and on PostgreSQL when AVATAR_TEST_DATABASE_URL points
at one (CI sets it). The schema is built by the real migrations, not create_all.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.app import create_app
from avatar_api.auth.service import create_api_key
from avatar_api.db import create_engine
from avatar_api.migrate import upgrade
from avatar_api.settings import Settings
from tests.fakes import RecordingGateway

PG_URL = os.environ.get("AVATAR_TEST_DATABASE_URL")
BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def _private_postgres_database(url: str) -> Iterator[str]:
    """A fresh database for this test session, next to the one the URL names.

    Several test sessions may share one server (developers, helpers, CI); each gets its
    own database so none wipes another's tables.
    """
    import asyncio

    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"avatar_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(statement: str) -> None:
        engine = create_engine(make_settings(database_url=url))
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("AVATAR_TEST_DATABASE_URL is not set (CI sets it to PostgreSQL)")
    with _private_postgres_database(PG_URL) as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A freshly migrated database on each backend."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    upgrade(make_settings(database_url=url))
    return url


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: nothing read from the machine's environment or .env."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": "sqlite+aiosqlite://",
        "test_mode": True,
        "embedded_worker": False,
        "storage_local_root": Path("/nonexistent"),
        # Tests poll the API in tight loops; the limits have their own tests (tests/ops).
        "rate_limit_per_minute": 0,
        "quota_concurrent_trainings": 0,
        "quota_trainings_per_day": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url=database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        outer = await conn.begin()
        yield conn
        await outer.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    # Sessions join the test's outer transaction; their commits only release savepoints,
    # and the whole test is rolled back at the end.
    return async_sessionmaker(
        bind=connection,
        class_=AsyncSession,
        expire_on_commit=False,
        join_transaction_mode="create_savepoint",
    )


@pytest.fixture
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url=database_url, storage_local_root=tmp_path / "storage")


@pytest.fixture
def gateway() -> RecordingGateway:
    return RecordingGateway()


@pytest.fixture
def app(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], gateway: RecordingGateway
) -> FastAPI:
    return create_app(settings, sessionmaker=sessionmaker, gateway=gateway)


async def make_key(session: AsyncSession, tenant: str) -> str:
    issued = await create_api_key(session, tenant_name=tenant)
    await session.commit()
    return issued.secret


@pytest.fixture
async def api_key(session: AsyncSession) -> str:
    return await make_key(session, f"tenant-a-{uuid.uuid4().hex[:6]}")


@pytest.fixture
async def other_api_key(session: AsyncSession) -> str:
    return await make_key(session, f"tenant-b-{uuid.uuid4().hex[:6]}")


def _client(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


@pytest.fixture
async def client(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, api_key) as c:
        yield c


@pytest.fixture
async def other_client(app: FastAPI, other_api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, other_api_key) as c:
        yield c


@pytest.fixture
async def anon_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, None) as c:
        yield c


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
