"""The engine's connection handling: read sessions without transactions, idle-only pings."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from avatar_api import db
from avatar_api.db import create_engine, create_read_sessionmaker, create_sessionmaker
from tests.conftest import make_settings


async def test_a_read_session_neither_waits_for_nor_takes_the_write_lock(
    database_url: str,
) -> None:
    engine = create_engine(make_settings(database_url=database_url))
    writes = create_sessionmaker(engine)
    reads = create_read_sessionmaker(writes)
    try:
        async with writes() as writer:
            # A write transaction is open (on SQLite: BEGIN IMMEDIATE holds the write lock).
            conn = await writer.connection()
            await conn.execute(text("UPDATE tenants SET name = name WHERE 1 = 0"))
            async with reads() as reader:
                count = await asyncio.wait_for(
                    reader.scalar(text("SELECT count(*) FROM tenants")), timeout=3
                )
                assert count is not None
            await writer.rollback()
    finally:
        await engine.dispose()


async def test_read_session_statements_are_separate_transactions_on_postgresql(
    postgres_url: str,
) -> None:
    engine = create_engine(make_settings(database_url=postgres_url))
    reads = create_read_sessionmaker(create_sessionmaker(engine))
    try:
        async with reads() as reader:
            first = await reader.scalar(text("SELECT pg_current_xact_id()::text"))
            second = await reader.scalar(text("SELECT pg_current_xact_id()::text"))
        assert first != second
    finally:
        await engine.dispose()


@pytest.mark.parametrize("ping_after_idle", [0.0, 3600.0])
async def test_an_idle_connection_is_pinged_and_replaced_when_dead(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, ping_after_idle: float
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", ping_after_idle)
    engine = create_engine(make_settings(database_url=postgres_url, database_pool_size=1))
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        # The database drops the pooled connection while it sits idle (a restart, a
        # firewall timeout): terminate it from another connection.
        async with engine.connect() as other:
            assert await other.scalar(text("SELECT pg_backend_pid()")) == pid  # pool of one
        killer = create_engine(make_settings(database_url=postgres_url))
        try:
            async with killer.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.dispose()
        await asyncio.sleep(0.1)

        if ping_after_idle == 0.0:
            # Idle long enough: pinged at checkout, found dead, replaced before use.
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
        else:
            # A connection in recent use is trusted (no ping), so the dead one surfaces.
            with pytest.raises(DBAPIError):
                async with engine.connect() as conn:
                    await conn.scalar(text("SELECT 1"))
    finally:
        await engine.dispose()
