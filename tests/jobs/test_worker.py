from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope
from avatar_api.jobs import (
    JobContext,
    JobKind,
    JobRegistry,
    PermanentJobError,
    RetryableJobError,
    Worker,
    backoff_delay,
)
from avatar_api.models.job import Job, JobStatus
from avatar_api.services import Services
from tests.conftest import make_settings
from tests.jobs.conftest import (
    Clock,
    WorkerFactory,
    add_job,
    count_effects,
    effects,
    load_job,
    record_effect,
)


class CeilingRandom(random.Random):
    """Makes the jittered backoff deterministic: always the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class GiveUps:
    calls: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)

    async def __call__(self, ctx: JobContext, error: str) -> None:
        self.calls.append((ctx.job.id, error, ctx.attempt))
        await record_effect(ctx.session, _ref(ctx), "gave-up")


def _ref(ctx: JobContext) -> str:
    return str(ctx.job.payload["ref"])


async def record(ctx: JobContext) -> None:
    await record_effect(ctx.session, _ref(ctx), f"attempt-{ctx.attempt}")


async def _make_running(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: Job,
    *,
    attempts: int,
    locked_until: datetime,
) -> None:
    """What a worker that claimed ``job`` and then died leaves behind."""
    async with session_scope(sessionmaker) as session:
        await session.exec(
            update(Job)
            .where(col(Job.id) == job.id)
            .values(
                status=JobStatus.running,
                attempts=attempts,
                locked_by="dead-worker",
                lease_token=uuid.uuid4(),
                locked_until=locked_until,
            )
        )


def _between(value: datetime, low: datetime, high: datetime) -> bool:
    return low <= value <= high


# --- success ---


async def test_success_commits_the_handlers_effects_once(
    job_sessionmaker: async_sessionmaker[AsyncSession],
    make_worker: WorkerFactory,
    services: Services,
) -> None:
    seen: list[JobContext] = []

    async def handler(ctx: JobContext) -> None:
        seen.append(ctx)
        await record(ctx)

    worker = make_worker(JobKind("test.job", handler))
    job = await add_job(job_sessionmaker, payload={"ref": "r1"})

    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    stored = await load_job(job_sessionmaker, job.id)
    assert stored.status is JobStatus.succeeded
    assert stored.attempts == 1
    assert stored.finished_at is not None
    assert (stored.lease_token, stored.locked_until) == (None, None)
    assert stored.locked_by == worker.worker_id
    assert await effects(job_sessionmaker) == [("r1", "attempt-1")]
    [ctx] = seen
    assert (ctx.job.id, ctx.attempt, ctx.services) == (job.id, 1, services)


async def test_only_registered_kinds_are_claimed(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    job = await add_job(job_sessionmaker, kind="other.kind")

    assert await make_worker(JobKind("test.job", record)).run_once() == 0
    assert await make_worker().run_once() == 0  # an empty registry claims nothing
    assert (await load_job(job_sessionmaker, job.id)).status is JobStatus.pending


async def test_jobs_scheduled_later_wait(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    worker = make_worker(JobKind("test.job", record))
    await add_job(job_sessionmaker, run_at=clock() + timedelta(seconds=60))

    assert await worker.run_once() == 0
    clock.advance(61)
    assert await worker.run_once() == 1


# --- retries ---


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (9, 512), (10, 600), (10_000, 600)]:
        samples = [backoff_delay(attempt, rng=rng) for _ in range(400)]
        assert all(0 <= delay <= ceiling for delay in samples)
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(samples) < 0.1 * ceiling
        assert max(samples) > 0.9 * ceiling


async def test_retryable_error_reschedules_with_growing_backoff(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    async def flaky(ctx: JobContext) -> None:
        await record(ctx)
        raise RetryableJobError("provider busy")

    worker = make_worker(JobKind("test.job", flaky), rng=CeilingRandom())
    job = await add_job(job_sessionmaker, max_attempts=5)

    for attempt, ceiling in [(1, 2.0), (2, 4.0)]:
        before = clock()
        assert await worker.run_once() == 1
        after = clock()
        stored = await load_job(job_sessionmaker, job.id)
        assert stored.status is JobStatus.pending
        assert stored.attempts == attempt
        assert stored.last_error == "provider busy"
        assert (stored.locked_by, stored.lease_token, stored.locked_until) == (None, None, None)
        delay = timedelta(seconds=ceiling)
        assert _between(stored.run_at, before + delay, after + delay)

        assert await worker.run_once() == 0  # not due yet
        clock.advance(ceiling + 0.1)

    assert await effects(job_sessionmaker) == []  # every attempt rolled back


async def test_retryable_error_with_a_delay_uses_it(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    async def later(ctx: JobContext) -> None:
        raise RetryableJobError("not ready", delay_seconds=30)

    worker = make_worker(JobKind("test.job", later))
    job = await add_job(job_sessionmaker)

    before = clock()
    assert await worker.run_once() == 1
    after = clock()
    stored = await load_job(job_sessionmaker, job.id)
    delay = timedelta(seconds=30)
    assert _between(stored.run_at, before + delay, after + delay)


async def test_unexpected_exception_is_retried(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    async def crashes_once(ctx: JobContext) -> None:
        await record(ctx)
        if ctx.attempt == 1:
            raise ValueError("boom")

    worker = make_worker(JobKind("test.job", crashes_once), rng=CeilingRandom())
    job = await add_job(job_sessionmaker, payload={"ref": "r"})

    assert await worker.run_once() == 1
    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.pending, 1)
    assert stored.last_error == "ValueError: boom"
    assert await effects(job_sessionmaker) == []

    clock.advance(2.1)
    assert await worker.run_once() == 1
    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.succeeded, 2)
    assert await effects(job_sessionmaker) == [("r", "attempt-2")]


async def test_last_error_is_truncated(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    async def loud(ctx: JobContext) -> None:
        raise RetryableJobError("x" * 10_000)

    job = await add_job(job_sessionmaker)
    assert await make_worker(JobKind("test.job", loud)).run_once() == 1
    stored = await load_job(job_sessionmaker, job.id)
    assert stored.last_error is not None
    assert 100 < len(stored.last_error) <= 4000


# --- giving up ---


async def test_permanent_error_fails_at_once_and_gives_up_once(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    async def bad(ctx: JobContext) -> None:
        await record_effect(ctx.session, _ref(ctx), "handler")
        raise PermanentJobError("photo archive is empty", code="empty_archive")

    give_ups = GiveUps()
    worker = make_worker(JobKind("test.job", bad, on_give_up=give_ups))
    job = await add_job(job_sessionmaker, payload={"ref": "r"}, max_attempts=5)

    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.failed, 1)
    assert stored.finished_at is not None
    assert stored.last_error == "empty_archive: photo archive is empty"
    assert give_ups.calls == [(job.id, "empty_archive: photo archive is empty", 1)]
    # The handler's effects rolled back; the give-up hook's committed with the failure.
    assert await effects(job_sessionmaker) == [("r", "gave-up")]


async def test_exhausted_attempts_fail_and_give_up_once(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    async def busy(ctx: JobContext) -> None:
        raise RetryableJobError("still busy", delay_seconds=0)

    give_ups = GiveUps()
    worker = make_worker(JobKind("test.job", busy, on_give_up=give_ups))
    job = await add_job(job_sessionmaker, payload={"ref": "r"}, max_attempts=3)

    for attempt in (1, 2):
        assert await worker.run_once() == 1
        stored = await load_job(job_sessionmaker, job.id)
        assert (stored.status, stored.attempts) == (JobStatus.pending, attempt)
        assert give_ups.calls == []
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.failed, 3)
    assert stored.last_error == "still busy"
    assert give_ups.calls == [(job.id, "still busy", 3)]


async def test_max_attempts_defaults_to_the_setting(
    job_sessionmaker: async_sessionmaker[AsyncSession], services: Services, database_url: str
) -> None:
    async def busy(ctx: JobContext) -> None:
        raise RetryableJobError("busy", delay_seconds=0)

    settings = make_settings(database_url=database_url, job_max_attempts=1)
    worker = Worker(
        services=dataclasses.replace(services, settings=settings),
        registry=JobRegistry([JobKind("test.job", busy)]),
        concurrency=1,
        lease_seconds=30,
        poll_interval=0.05,
    )
    job = await add_job(job_sessionmaker)

    assert await worker.run_once() == 1
    assert (await load_job(job_sessionmaker, job.id)).status is JobStatus.failed


async def test_a_failing_give_up_hook_still_fails_the_job(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    async def bad(ctx: JobContext) -> None:
        raise PermanentJobError("nope")

    async def broken_hook(ctx: JobContext, error: str) -> None:
        await record_effect(ctx.session, _ref(ctx), "hook")
        raise RuntimeError("hook bug")

    job = await add_job(job_sessionmaker, payload={"ref": "r"})
    assert await make_worker(JobKind("test.job", bad, on_give_up=broken_hook)).run_once() == 1

    stored = await load_job(job_sessionmaker, job.id)
    assert stored.status is JobStatus.failed
    assert stored.last_error == "job_failed: nope (on_give_up failed: RuntimeError: hook bug)"
    assert await effects(job_sessionmaker) == []


# --- leases ---


async def test_an_expired_lease_is_taken_over(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    worker = make_worker(JobKind("test.job", record))
    job = await add_job(job_sessionmaker, payload={"ref": "r"})
    await _make_running(
        job_sessionmaker, job, attempts=1, locked_until=clock() + timedelta(seconds=60)
    )

    assert await worker.run_once() == 0  # the lease is still valid
    clock.advance(61)
    assert await worker.run_once() == 1

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.succeeded, 2)
    assert stored.locked_by == worker.worker_id
    assert await effects(job_sessionmaker) == [("r", "attempt-2")]


async def test_an_expired_lease_on_the_last_attempt_gives_up(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory, clock: Clock
) -> None:
    ran: list[uuid.UUID] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    give_ups = GiveUps()
    worker = make_worker(JobKind("test.job", handler, on_give_up=give_ups))
    job = await add_job(job_sessionmaker, payload={"ref": "r"}, max_attempts=2)
    await _make_running(job_sessionmaker, job, attempts=2, locked_until=clock())
    clock.advance(1)

    assert await worker.run_once() == 1

    stored = await load_job(job_sessionmaker, job.id)
    assert stored.status is JobStatus.failed
    assert stored.last_error is not None
    assert "lease expired" in stored.last_error
    assert ran == []
    assert [call[0] for call in give_ups.calls] == [job.id]


async def test_a_worker_that_lost_its_lease_commits_nothing(
    job_sessionmaker: async_sessionmaker[AsyncSession],
    make_worker: WorkerFactory,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        started.set()
        await release.wait()
        await record_effect(ctx.session, _ref(ctx), "slow-worker")

    async def fast(ctx: JobContext) -> None:
        await record_effect(ctx.session, _ref(ctx), "fast-worker")

    slow_worker = make_worker(JobKind("test.job", slow), worker_id="slow")
    fast_worker = make_worker(JobKind("test.job", fast), worker_id="fast")
    job = await add_job(job_sessionmaker, payload={"ref": "r"})

    slow_run = asyncio.create_task(slow_worker.run_once())
    await asyncio.wait_for(started.wait(), timeout=5)
    assert await fast_worker.run_once() == 0  # slow holds a valid lease
    clock.advance(31)  # past slow's 30 s lease: slow is presumed dead
    assert await fast_worker.run_once() == 1
    release.set()
    with caplog.at_level(logging.WARNING, logger="avatar_api.jobs"):
        assert await asyncio.wait_for(slow_run, timeout=10) == 1

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.attempts, stored.locked_by) == (JobStatus.succeeded, 2, "fast")
    assert await effects(job_sessionmaker) == [("r", "fast-worker")]
    assert [r.getMessage() for r in caplog.records] == ["job.lease_lost"]


async def test_handler_effects_roll_back_when_the_lease_changed_hands(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    thief = uuid.uuid4()

    async def robbed(ctx: JobContext) -> None:
        # Another worker's claim, committed while this handler runs.
        async with session_scope(ctx.services.sessionmaker) as other:
            await other.exec(update(Job).where(col(Job.id) == ctx.job.id).values(lease_token=thief))
        await record_effect(ctx.session, _ref(ctx), "robbed")

    job = await add_job(job_sessionmaker, payload={"ref": "r"})
    assert await make_worker(JobKind("test.job", robbed)).run_once() == 1

    stored = await load_job(job_sessionmaker, job.id)
    assert (stored.status, stored.lease_token, stored.finished_at) == (
        JobStatus.running,
        thief,
        None,
    )
    assert await effects(job_sessionmaker) == []


async def test_heartbeat_extends_the_lease_of_a_long_job(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    other = make_worker(JobKind("test.job", record), worker_id="other")
    observed: list[tuple[datetime | None, datetime | None, int]] = []

    async def long(ctx: JobContext) -> None:
        # Twice the lease: without heartbeats the lease would have expired by now.
        await asyncio.sleep(0.6)
        current = await load_job(ctx.services.sessionmaker, ctx.job.id)
        observed.append((ctx.job.locked_until, current.locked_until, await other.run_once()))

    worker = make_worker(JobKind("test.job", long), lease_seconds=0.3)
    job = await add_job(job_sessionmaker)
    assert await worker.run_once() == 1

    [(claimed_until, extended_until, taken_by_other)] = observed
    assert claimed_until is not None
    assert extended_until is not None
    assert extended_until >= claimed_until + timedelta(seconds=0.3)
    assert taken_by_other == 0
    assert (await load_job(job_sessionmaker, job.id)).attempts == 1


# --- the loop ---


async def test_run_processes_jobs_on_wake_and_survives_crashing_handlers(
    job_sessionmaker: async_sessionmaker[AsyncSession], make_worker: WorkerFactory
) -> None:
    async def crash(ctx: JobContext) -> None:
        raise RuntimeError("handler bug")

    worker = make_worker(
        JobKind("test.crash", crash),
        JobKind("test.job", record),
        poll_interval=30,  # only wake() can make this test pass in time
        rng=CeilingRandom(),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.1)  # the worker has polled once and is idle

    crashing = await add_job(job_sessionmaker, kind="test.crash")
    fine = await add_job(job_sessionmaker, payload={"ref": "r"})
    worker.wake()

    async def settled() -> None:
        while True:
            crashed = await load_job(job_sessionmaker, crashing.id)
            done = await load_job(job_sessionmaker, fine.id)
            retried = crashed.attempts == 1 and crashed.status is JobStatus.pending
            if retried and done.status is JobStatus.succeeded:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(settled(), timeout=5)
    assert not running.done()  # the crash did not reach the loop
    stop.set()
    await asyncio.wait_for(running, timeout=5)
    assert await effects(job_sessionmaker) == [("r", "attempt-1")]


async def test_graceful_stop_finishes_short_jobs_and_releases_the_rest(
    job_sessionmaker: async_sessionmaker[AsyncSession],
    make_worker: WorkerFactory,
    clock: Clock,
) -> None:
    stuck_started = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        if _ref(ctx) == "stuck":
            stuck_started.set()
            await asyncio.sleep(3600)
        await asyncio.sleep(0.2)
        await record(ctx)

    worker = make_worker(JobKind("test.job", handler), concurrency=2, shutdown_grace_seconds=0.6)
    quick = await add_job(job_sessionmaker, payload={"ref": "quick"})
    stuck = await add_job(job_sessionmaker, payload={"ref": "stuck"})
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(stuck_started.wait(), timeout=5)

    stop.set()
    began = time.monotonic()
    await asyncio.wait_for(running, timeout=5)
    assert time.monotonic() - began < 2

    assert (await load_job(job_sessionmaker, quick.id)).status is JobStatus.succeeded
    released = await load_job(job_sessionmaker, stuck.id)
    assert released.status is JobStatus.pending
    assert released.attempts == 0  # the interrupted attempt does not count
    assert (released.locked_by, released.lease_token, released.locked_until) == (None, None, None)
    assert released.run_at <= clock()
    assert await effects(job_sessionmaker) == [("quick", "attempt-1")]

    # Due at once: the next worker does not wait for a lease to expire.
    assert await make_worker(JobKind("test.job", record)).run_once() == 1
    assert (await load_job(job_sessionmaker, stuck.id)).status is JobStatus.succeeded


async def test_four_workers_run_two_hundred_jobs_exactly_once(
    database_url: str,
    job_sessionmaker: async_sessionmaker[AsyncSession],
    make_worker: WorkerFactory,
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite runs a single in-process worker by design")

    async def handler(ctx: JobContext) -> None:
        await record_effect(ctx.session, _ref(ctx), ctx.job.locked_by or "")
        await asyncio.sleep(0.005)

    async with session_scope(job_sessionmaker) as session:
        session.add_all(Job(kind="test.job", payload={"ref": f"job-{n:03d}"}) for n in range(200))
    workers = [
        make_worker(JobKind("test.job", handler), worker_id=f"w{n}", poll_interval=0.02)
        for n in range(4)
    ]
    stop = asyncio.Event()
    runs = [asyncio.create_task(worker.run(stop)) for worker in workers]

    async def all_succeeded() -> None:
        while True:
            async with job_sessionmaker() as session:
                done = (
                    await session.exec(
                        select(func.count()).where(col(Job.status) == JobStatus.succeeded)
                    )
                ).one()
            if done == 200:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(all_succeeded(), timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*runs)

    assert await count_effects(job_sessionmaker) == (200, 200)
    async with job_sessionmaker() as session:
        jobs = (await session.exec(select(Job))).all()
    assert {(job.status, job.attempts) for job in jobs} == {(JobStatus.succeeded, 1)}
    assert len({tag for _, tag in await effects(job_sessionmaker)}) > 1
