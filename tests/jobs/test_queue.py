from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.jobs import enqueue, purge_finished
from avatar_api.jobs.queue import enqueue_row
from avatar_api.models.job import Job, JobStatus
from tests.jobs.conftest import effects, load_job, record_effect


async def _count_jobs(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int((await session.exec(select(func.count()).select_from(Job))).one())


async def test_enqueue_commits_with_the_callers_transaction(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with session_scope(job_sessionmaker) as session:
        await record_effect(session, "state-change")
        job = await enqueue(session, kind="test.job", payload={"ref": "a", "n": 1})

    stored = await load_job(job_sessionmaker, job.id)
    assert stored.status is JobStatus.pending
    assert stored.payload == {"ref": "a", "n": 1}
    assert stored.attempts == 0
    assert stored.max_attempts is None
    assert stored.run_at <= utcnow()
    assert await effects(job_sessionmaker) == [("state-change", "")]


async def test_a_rolled_back_transaction_leaves_no_job(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async def failing_request() -> None:
        async with session_scope(job_sessionmaker) as session:
            await record_effect(session, "state-change")
            await enqueue(session, kind="test.job", payload={"ref": "a"})
            raise RuntimeError("request failed")

    with pytest.raises(RuntimeError, match="request failed"):
        await failing_request()

    assert await _count_jobs(job_sessionmaker) == 0
    assert await effects(job_sessionmaker) == []


async def test_enqueue_keeps_run_at_and_max_attempts(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    later = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with session_scope(job_sessionmaker) as session:
        job = await enqueue(
            session, kind="test.job", payload={}, run_at=later, max_attempts=3, dedupe_key="k"
        )

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.run_at, stored.max_attempts, stored.dedupe_key) == (later, 3, "k")


async def test_dedupe_returns_the_active_job(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with session_scope(job_sessionmaker) as session:
        first = await enqueue(session, kind="test.job", payload={"n": 1}, dedupe_key="avatar:1")
        in_same_tx = await enqueue(
            session, kind="test.job", payload={"n": 2}, dedupe_key="avatar:1"
        )
    async with session_scope(job_sessionmaker) as session:
        later = await enqueue(session, kind="test.job", payload={"n": 3}, dedupe_key="avatar:1")
        other_key = await enqueue(session, kind="test.job", payload={"n": 4}, dedupe_key="avatar:2")

    assert in_same_tx.id == first.id
    assert later.id == first.id
    assert later.payload == {"n": 1}
    assert other_key.id != first.id
    assert await _count_jobs(job_sessionmaker) == 2


@pytest.mark.parametrize("finished", [JobStatus.succeeded, JobStatus.failed])
async def test_dedupe_key_is_free_again_once_the_job_finished(
    job_sessionmaker: async_sessionmaker[AsyncSession], finished: JobStatus
) -> None:
    async with session_scope(job_sessionmaker) as session:
        first = await enqueue(session, kind="test.job", payload={}, dedupe_key="k")
    async with session_scope(job_sessionmaker) as session:
        await session.exec(update(Job).where(col(Job.id) == first.id).values(status=finished))
    async with session_scope(job_sessionmaker) as session:
        second = await enqueue(session, kind="test.job", payload={}, dedupe_key="k")

    assert second.id != first.id
    assert (await load_job(job_sessionmaker, second.id)).status is JobStatus.pending


async def test_concurrent_enqueues_with_one_dedupe_key_make_one_job(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The loser of the race gets the winner's job and keeps a usable transaction.

    On PostgreSQL the loser's insert waits on the unique index until the winner commits,
    then fails inside its savepoint; on SQLite it waits for the write lock instead.
    """
    async with job_sessionmaker() as winner:
        won = await enqueue(winner, kind="test.job", payload={"by": "winner"}, dedupe_key="k")

        async def loser() -> uuid.UUID:
            async with session_scope(job_sessionmaker) as session:
                job = await enqueue(
                    session, kind="test.job", payload={"by": "loser"}, dedupe_key="k"
                )
                await record_effect(session, "loser-still-commits")
                return job.id

        racing = asyncio.create_task(loser())
        await asyncio.sleep(0.3)
        assert not racing.done(), "the second enqueue should wait for the first transaction"
        await winner.commit()

    assert await asyncio.wait_for(racing, timeout=10) == won.id
    assert await _count_jobs(job_sessionmaker) == 1
    assert await effects(job_sessionmaker) == [("loser-still-commits", "")]


async def test_enqueue_rejects_bad_input(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with job_sessionmaker() as session:
        with pytest.raises(ValueError, match="invalid job kind"):
            await enqueue(session, kind="NoDots", payload={})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await enqueue(session, kind="test.job", payload={"id": uuid.uuid4()})
        with pytest.raises(ValueError, match="timezone-aware"):
            await enqueue(session, kind="test.job", payload={}, run_at=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="max_attempts"):
            await enqueue(session, kind="test.job", payload={}, max_attempts=0)
        with pytest.raises(ValueError, match="dedupe_key"):
            await enqueue(session, kind="test.job", payload={}, dedupe_key="")
    assert await _count_jobs(job_sessionmaker) == 0


async def test_enqueue_row_writes_the_row_enqueue_writes(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    later = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with session_scope(job_sessionmaker) as session:
        orm = await enqueue(session, kind="test.job", payload={"ref": "a", "n": 1})
        core_id = await enqueue_row(
            await session.connection(), kind="test.job", payload={"ref": "a", "n": 1}
        )
        timed_id = await enqueue_row(
            await session.connection(), kind="test.job", payload={}, run_at=later, max_attempts=3
        )

    by_orm, by_core = (
        await load_job(job_sessionmaker, orm.id),
        await load_job(job_sessionmaker, core_id),
    )
    differing = {"id", "run_at", "created_at", "updated_at"}
    assert by_core.model_dump(exclude=differing) == by_orm.model_dump(exclude=differing)
    assert by_core.status is JobStatus.pending
    assert by_core.run_at <= utcnow()
    assert by_core.created_at == by_core.updated_at == by_core.run_at
    timed = await load_job(job_sessionmaker, timed_id)
    assert (timed.run_at, timed.max_attempts, timed.payload) == (later, 3, {})


async def test_enqueue_row_commits_and_rolls_back_with_the_session(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async def failing_request() -> None:
        async with session_scope(job_sessionmaker) as session:
            await record_effect(session, "state-change")
            await enqueue_row(await session.connection(), kind="test.job", payload={"ref": "a"})
            raise RuntimeError("request failed")

    with pytest.raises(RuntimeError, match="request failed"):
        await failing_request()
    assert await _count_jobs(job_sessionmaker) == 0
    assert await effects(job_sessionmaker) == []


async def test_enqueue_row_rejects_bad_input(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with job_sessionmaker() as session:
        connection = await session.connection()
        with pytest.raises(ValueError, match="invalid job kind"):
            await enqueue_row(connection, kind="NoDots", payload={})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await enqueue_row(connection, kind="test.job", payload={"id": uuid.uuid4()})
        with pytest.raises(ValueError, match="timezone-aware"):
            await enqueue_row(connection, kind="test.job", payload={}, run_at=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="max_attempts"):
            await enqueue_row(connection, kind="test.job", payload={}, max_attempts=0)
        await session.commit()
    assert await _count_jobs(job_sessionmaker) == 0


async def test_purge_finished_deletes_only_old_succeeded_jobs(
    job_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=31), now - timedelta(days=1)
    rows = {
        "old-succeeded": (JobStatus.succeeded, old),
        "recent-succeeded": (JobStatus.succeeded, recent),
        "old-failed": (JobStatus.failed, old),
        "pending": (JobStatus.pending, None),
    }
    async with session_scope(job_sessionmaker) as session:
        for name, (status, finished_at) in rows.items():
            session.add(
                Job(kind="test.job", payload={"name": name}, status=status, finished_at=finished_at)
            )

    async with session_scope(job_sessionmaker) as session:
        deleted = await purge_finished(session, timedelta(days=30), now=now)

    async with job_sessionmaker() as session:
        left = sorted(str(job.payload["name"]) for job in (await session.exec(select(Job))).all())
    assert deleted == 1
    assert left == ["old-failed", "pending", "recent-succeeded"]
