"""The worker: claims due jobs under a lease, runs them, records each outcome exactly once.

Every write a worker makes to a claimed job is a compare-and-set on ``(id, lease_token)``
with ``status = 'running'``. A claim replaces the token, so once another worker has taken
a job over (after our lease expired), all of our writes to it match nothing: in
particular the success write, which shares its transaction with the handler's effects,
so those effects are rolled back too and commit exactly once, with whichever attempt
holds the lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.registry import JobContext, JobKind, JobRegistry
from avatar_api.models.job import WORKER_ID_MAX_LENGTH, Job, JobStatus
from avatar_api.services import Services

logger = logging.getLogger("avatar_api.jobs")

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0
LAST_ERROR_MAX_CHARS = 4000
DEFAULT_SHUTDOWN_GRACE_SECONDS = 8.0  # below Docker's default 10 s stop timeout


def backoff_delay(
    attempt: int,
    *,
    rng: random.Random,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.

    Full jitter spreads the retries of jobs that failed together (a provider outage)
    instead of sending them back in synchronised waves.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 64))
    return rng.uniform(0.0, ceiling)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"[:WORKER_ID_MAX_LENGTH]


def _truncate(text: str) -> str:
    if len(text) <= LAST_ERROR_MAX_CHARS:
        return text
    return text[: LAST_ERROR_MAX_CHARS - 1] + "…"


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Worker:
    """Runs the jobs of ``registry``'s kinds, up to ``concurrency`` at a time.

    Options left ``None`` come from ``services.settings``. ``batch_size`` caps one claim
    (default: ``concurrency``). ``services.clock`` is the time for every schedule and
    lease decision, so tests can move it.
    """

    def __init__(
        self,
        *,
        services: Services,
        registry: JobRegistry,
        worker_id: str | None = None,
        concurrency: int | None = None,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        batch_size: int | None = None,
        shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        settings = services.settings
        self.services = services
        self.registry = registry
        self.worker_id = (worker_id or default_worker_id())[:WORKER_ID_MAX_LENGTH]
        self.concurrency = concurrency if concurrency is not None else settings.worker_concurrency
        self.lease_seconds = (
            lease_seconds if lease_seconds is not None else float(settings.job_lease_seconds)
        )
        self.poll_interval = (
            poll_interval if poll_interval is not None else settings.job_poll_interval_seconds
        )
        self.batch_size = batch_size if batch_size is not None else self.concurrency
        self.shutdown_grace_seconds = shutdown_grace_seconds
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        if self.lease_seconds <= 0 or self.poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self._default_max_attempts = settings.job_max_attempts
        self._rng = rng or random.Random()  # noqa: S311  (jitter, not secrecy)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Job] = {}

    # --- public ---

    def wake(self) -> None:
        """Claim now instead of at the next poll (call after committing an enqueue)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim up to ``batch_size`` due jobs once and run them to the end; return how many."""
        jobs = await self._claim(self.batch_size)
        tasks = [self._spawn(job) for job in jobs]
        if tasks:
            await asyncio.wait(tasks)
        return len(jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish or hand back the jobs in flight.

        In-flight jobs get ``shutdown_grace_seconds`` to finish; the rest are cancelled
        (their transactions roll back) and made due again at once, so another worker
        picks them up without waiting for the lease to expire.
        """
        logger.info(
            "worker.started",
            extra={
                "worker_id": self.worker_id,
                "concurrency": self.concurrency,
                "kinds": sorted(self.registry),
            },
        )
        try:
            while not stop.is_set():
                # Cleared before claiming: a wake() that arrives during the claim is kept
                # and skips the next wait.
                self._wake.clear()
                room = min(self.concurrency - len(self._inflight), self.batch_size)
                claimed = await self._claim_logged(room) if room > 0 else []
                for job in claimed:
                    self._spawn(job)
                if claimed and len(claimed) == room:
                    continue  # a full batch: more is probably due
                await self._idle(stop)
        finally:
            await self._drain()
            logger.info("worker.stopped", extra={"worker_id": self.worker_id})

    # --- claiming ---

    async def _claim(self, limit: int) -> list[Job]:
        if limit < 1 or not self.registry:
            return []
        now = self.services.clock()
        # One token per claim statement: (id, token) pairs are still unique, and a
        # takeover always gets a token the previous holder never saw.
        token = uuid.uuid4()
        due = or_(
            and_(col(Job.status) == JobStatus.pending, col(Job.run_at) <= now),
            # A running job whose lease ran out: its worker died or hung.
            and_(col(Job.status) == JobStatus.running, col(Job.locked_until) < now),
        )
        async with session_scope(self.services.sessionmaker) as session:
            candidates = (
                select(Job.id)
                .where(due, col(Job.kind).in_(sorted(self.registry)))
                .order_by(col(Job.run_at))
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                # Concurrent workers skip each other's candidates instead of queueing on
                # them. SQLite needs no row locks: BEGIN IMMEDIATE (db.py) serialises writers.
                candidates = candidates.with_for_update(skip_locked=True)
            stmt = (
                update(Job)
                .where(col(Job.id).in_(candidates.scalar_subquery()))
                .values(
                    status=JobStatus.running,
                    locked_by=self.worker_id,
                    lease_token=token,
                    locked_until=now + timedelta(seconds=self.lease_seconds),
                    attempts=col(Job.attempts) + 1,
                    updated_at=now,
                )
                .returning(Job)
                .execution_options(synchronize_session=False)
            )
            jobs: list[Job] = list((await session.exec(stmt)).scalars().all())
        jobs.sort(key=lambda job: job.run_at)
        for job in jobs:
            logger.debug("job.claimed", extra=self._log_fields(job))
        return jobs

    async def _claim_logged(self, limit: int) -> list[Job]:
        try:
            return await self._claim(limit)
        except Exception:
            # The database may be restarting; the loop must outlive it.
            logger.exception("worker.claim_failed", extra={"worker_id": self.worker_id})
            return []

    # --- running ---

    def _spawn(self, job: Job) -> asyncio.Task[None]:
        task = asyncio.create_task(self._execute(job), name=f"job {job.kind} {job.id}")
        self._inflight[task] = job
        task.add_done_callback(lambda done: self._inflight.pop(done, None))
        return task

    async def _execute(self, job: Job) -> None:
        # The heartbeat starts at once: a job waiting for a slot still holds its lease.
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            async with self._slots:
                await self._attempt(job, self.registry[job.kind])
        except Exception:
            # Recording the outcome failed (database down): the job stays running and is
            # taken over once its lease expires. Never let it reach the loop.
            logger.exception("job.outcome_not_recorded", extra=self._log_fields(job))
        finally:
            heartbeat.cancel()
            await asyncio.wait([heartbeat])

    async def _attempt(self, job: Job, kind: JobKind) -> None:
        started = time.monotonic()
        if job.attempts > self._max_attempts(job):
            # Taken over from a worker that died during the last allowed attempt.
            await self._give_up(
                job, kind, "lease expired during the last attempt (worker lost)", started
            )
            return
        try:
            async with self.services.sessionmaker() as session:
                await kind.handler(
                    JobContext(
                        session=session, job=job, services=self.services, attempt=job.attempts
                    )
                )
                # Same transaction as the handler's effects: both commit, or neither.
                if not await self._set_if_leased(
                    session,
                    job,
                    status=JobStatus.succeeded,
                    finished_at=self.services.clock(),
                    lease_token=None,
                    locked_until=None,
                ):
                    await session.rollback()
                    self._log_lease_lost(job, started)
                    return
                await session.commit()
        except PermanentJobError as exc:
            await self._give_up(job, kind, f"{exc.code}: {exc.message}", started)
            return
        except RetryableJobError as exc:
            await self._retry(job, kind, exc.message, exc.delay_seconds, started, exc=None)
            return
        except Exception as exc:
            await self._retry(job, kind, _describe(exc), None, started, exc=exc)
            return
        logger.info("job.succeeded", extra=self._log_fields(job, started))

    async def _retry(
        self,
        job: Job,
        kind: JobKind,
        error: str,
        delay_seconds: float | None,
        started: float,
        *,
        exc: Exception | None,
    ) -> None:
        if job.attempts >= self._max_attempts(job):
            await self._give_up(job, kind, error, started, exc=exc)
            return
        if delay_seconds is None:
            delay_seconds = backoff_delay(job.attempts, rng=self._rng)
        async with session_scope(self.services.sessionmaker) as session:
            recorded = await self._set_if_leased(
                session,
                job,
                status=JobStatus.pending,
                run_at=self.services.clock() + timedelta(seconds=delay_seconds),
                last_error=_truncate(error),
                locked_by=None,
                lease_token=None,
                locked_until=None,
            )
        if not recorded:
            self._log_lease_lost(job, started)
            return
        logger.warning(
            "job.retry",
            extra={
                **self._log_fields(job, started),
                "error": error,
                "delay_seconds": round(delay_seconds, 3),
            },
            exc_info=exc,
        )

    async def _give_up(
        self,
        job: Job,
        kind: JobKind,
        error: str,
        started: float,
        *,
        exc: Exception | None = None,
    ) -> None:
        fields = {**self._log_fields(job, started), "error": error}
        hook_error: Exception | None = None
        try:
            async with session_scope(self.services.sessionmaker) as session:
                # The failed status and on_give_up's effects commit together; if we crash
                # in between, the lease expires and the next taker gives up again.
                if not await self._mark_failed(session, job, error):
                    self._log_lease_lost(job, started)
                    return
                if kind.on_give_up is not None:
                    context = JobContext(
                        session=session, job=job, services=self.services, attempt=job.attempts
                    )
                    try:
                        await kind.on_give_up(context, error)
                    except Exception as exc_in_hook:
                        hook_error = exc_in_hook
                        raise
        except Exception:
            if hook_error is None:
                raise
            # Do not leave the job running because its hook is broken: fail it without
            # the hook and say so loudly, in the log and on the row.
            logger.exception("job.give_up_failed", extra=fields)
            error = f"{error} (on_give_up failed: {_describe(hook_error)})"
            async with session_scope(self.services.sessionmaker) as session:
                if not await self._mark_failed(session, job, error):
                    self._log_lease_lost(job, started)
                    return
        logger.error("job.failed", extra=fields, exc_info=exc)

    async def _mark_failed(self, session: AsyncSession, job: Job, error: str) -> bool:
        return await self._set_if_leased(
            session,
            job,
            status=JobStatus.failed,
            finished_at=self.services.clock(),
            last_error=_truncate(error),
            lease_token=None,
            locked_until=None,
        )

    async def _heartbeat(self, job: Job) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with session_scope(self.services.sessionmaker) as session:
                    kept = await self._set_if_leased(
                        session,
                        job,
                        locked_until=self.services.clock() + timedelta(seconds=self.lease_seconds),
                    )
            except Exception:
                # Transient (on SQLite: the handler holds the write lock). The lease has
                # two more beats of slack before it expires.
                logger.warning("job.heartbeat_failed", extra=self._log_fields(job), exc_info=True)
                continue
            if not kept:
                # Taken over, or already finished: the final compare-and-set decides.
                return

    # --- stopping ---

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                [*waiters, *self._inflight],
                timeout=self.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        _, unfinished = await asyncio.wait(
            list(self._inflight), timeout=self.shutdown_grace_seconds
        )
        if not unfinished:
            return
        jobs = [self._inflight[task] for task in unfinished if task in self._inflight]
        for task in unfinished:
            task.cancel()
        await asyncio.wait(unfinished)
        await self._release(jobs)

    async def _release(self, jobs: list[Job]) -> None:
        now = self.services.clock()
        try:
            async with session_scope(self.services.sessionmaker) as session:
                for job in jobs:
                    # The interrupted attempt was ours to stop, not the job's failure,
                    # so it is not counted.
                    if await self._set_if_leased(
                        session,
                        job,
                        status=JobStatus.pending,
                        run_at=now,
                        attempts=col(Job.attempts) - 1,
                        locked_by=None,
                        lease_token=None,
                        locked_until=None,
                    ):
                        logger.info("job.released", extra=self._log_fields(job))
        except Exception:
            logger.exception(
                "worker.release_failed",
                extra={"worker_id": self.worker_id, "job_ids": [str(job.id) for job in jobs]},
            )

    # --- helpers ---

    async def _set_if_leased(self, session: AsyncSession, job: Job, **values: Any) -> bool:
        """Update ``job`` only while we still hold its lease; ``False`` when we do not."""
        result = await session.exec(
            update(Job)
            .where(
                col(Job.id) == job.id,
                col(Job.lease_token) == job.lease_token,
                col(Job.status) == JobStatus.running,
            )
            .values(updated_at=self.services.clock(), **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def _max_attempts(self, job: Job) -> int:
        return job.max_attempts if job.max_attempts is not None else self._default_max_attempts

    def _log_fields(self, job: Job, started: float | None = None) -> dict[str, object]:
        fields: dict[str, object] = {
            "job_id": str(job.id),
            "kind": job.kind,
            "attempt": job.attempts,
            "worker_id": self.worker_id,
        }
        if started is not None:
            fields["duration_ms"] = round((time.monotonic() - started) * 1000)
        return fields

    def _log_lease_lost(self, job: Job, started: float) -> None:
        logger.warning("job.lease_lost", extra=self._log_fields(job, started))
