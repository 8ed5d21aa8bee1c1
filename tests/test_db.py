"""The engine's connection handling: read sessions without transactions, idle-only pings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from avatar_api import db
from avatar_api.db import Reader, create_engine, create_read_sessionmaker, create_sessionmaker
from avatar_api.db_pool import FairAsyncQueuePool, FairQueue
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
            # The session-less reader of the hot paths behaves the same.
            async with Reader(reads).connect() as connection:
                again = await asyncio.wait_for(
                    connection.scalar(text("SELECT count(*) FROM tenants")), timeout=3
                )
                assert again == count
            await writer.rollback()
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.checkedout() == 0  # the reader's connection went back
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


async def test_the_fair_queue_serves_waiters_in_arrival_order_and_newcomers_queue_behind() -> None:
    queue: FairQueue[str] = FairQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("connection")
    # Put back while two wait: a request arriving now does not take it past them
    # (asyncio.Queue would hand it to whoever asks before the woken waiter runs).
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    newcomer = asyncio.create_task(queue.get())
    assert await asyncio.wait_for(first, 1) == "connection"
    queue.put_nowait("connection")
    assert await asyncio.wait_for(second, 1) == "connection"
    queue.put_nowait("connection")
    assert await asyncio.wait_for(newcomer, 1) == "connection"
    assert queue.empty()


async def test_a_connection_handed_to_a_waiter_that_gives_up_goes_to_the_next() -> None:
    queue: FairQueue[str] = FairQueue()
    leaving = asyncio.create_task(queue.get())
    staying = asyncio.create_task(queue.get())
    timed_out = asyncio.create_task(asyncio.wait_for(queue.get(), 0.01))
    await asyncio.sleep(0)
    queue.put_nowait("connection")  # handed to `leaving`...
    leaving.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(staying, 1) == "connection"
    with pytest.raises(TimeoutError):
        await timed_out
    # The timed-out waiter left the line: the next connection is kept, not lost.
    queue.put_nowait("connection")
    assert queue.get_nowait() == "connection"


async def test_postgresql_connections_come_from_the_fair_pool(postgres_url: str) -> None:
    engine = create_engine(make_settings(database_url=postgres_url, database_pool_size=2))
    try:
        assert isinstance(engine.pool, FairAsyncQueuePool)
        with pytest.raises(ValueError, match="max_overflow=0"):
            FairAsyncQueuePool(lambda: None, pool_size=2, max_overflow=5)
        async with engine.connect() as one, engine.connect() as two:  # both connections open
            await one.execute(text("SELECT 1"))
            await two.execute(text("SELECT 1"))
        order: list[int] = []

        async def query(n: int) -> None:
            async with engine.connect() as conn:
                order.append(n)
                await conn.execute(text("SELECT pg_sleep(0.02)"))

        await asyncio.wait_for(asyncio.gather(*(query(n) for n in range(8))), 10)
        # Two served at once, the six that had to wait served in the order they asked.
        assert sorted(order[:2]) == [0, 1]
        assert order[2:] == list(range(2, 8))
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_a_sqlite_file_gets_the_same_fixed_fair_pool_and_memory_keeps_one_connection(
    tmp_path: Path,
) -> None:
    file_engine = create_engine(
        make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", database_pool_size=3)
    )
    memory_engine = create_engine(make_settings(database_url="sqlite+aiosqlite://"))
    try:
        assert isinstance(file_engine.pool, FairAsyncQueuePool)
        assert file_engine.pool.size() == 3
        # In memory, a second connection would be another, empty database.
        assert not isinstance(memory_engine.pool, QueuePool)
        async with memory_engine.connect() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.commit()
        async with memory_engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 0
    finally:
        await file_engine.dispose()
        await memory_engine.dispose()
