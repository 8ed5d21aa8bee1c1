"""Metrics read from the database at scrape time: trainings by status, the job queue.

The database, not a process, knows how many trainings are running or how old the oldest
due job is, so these are queried when Prometheus scrapes rather than kept as gauges that
every process would update (and disagree about after a restart). A few aggregate
queries, cached for ``ttl_seconds`` so that several scrapers (or a fast scrape interval)
cost one round of queries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import create_engine, create_sessionmaker, session_scope, utcnow
from avatar_api.models import Avatar, Job, JobStatus, Training, TrainingStatus, TrainingType
from avatar_api.settings import Settings

logger = logging.getLogger("avatar_api.metrics")

DEFAULT_TTL_SECONDS = 10.0


@dataclass(frozen=True)
class DatabaseSnapshot:
    trainings: dict[tuple[str, str], int]  # (status, type) -> count
    jobs_due: dict[str, int]  # kind -> pending jobs whose run_at has come
    jobs_running: dict[str, int]
    jobs_expired_leases: int
    jobs_failed: int
    oldest_due_age_seconds: float


async def take_snapshot(session: AsyncSession, *, now: datetime) -> DatabaseSnapshot:
    trainings: dict[tuple[str, str], int] = {
        (status.value, kind.value): 0 for status in TrainingStatus for kind in TrainingType
    }
    rows = await session.exec(
        select(Training.status, Avatar.training_type, func.count())
        .join(Avatar, col(Avatar.id) == col(Training.avatar_id))
        .group_by(col(Training.status), col(Avatar.training_type))
    )
    for status, training_type, count in rows.all():
        trainings[(str(status), str(training_type))] = int(count)

    jobs_due: dict[str, int] = {}
    oldest: datetime | None = None
    due_rows = await session.exec(
        select(Job.kind, func.count(), func.min(Job.run_at))
        .where(col(Job.status) == JobStatus.pending, col(Job.run_at) <= now)
        .group_by(col(Job.kind))
    )
    for kind, count, first_run_at in due_rows.all():
        jobs_due[kind] = int(count)
        if first_run_at is not None and (oldest is None or first_run_at < oldest):
            oldest = first_run_at
    running_rows = await session.exec(
        select(Job.kind, func.count())
        .where(col(Job.status) == JobStatus.running)
        .group_by(col(Job.kind))
    )
    jobs_running = {kind: int(count) for kind, count in running_rows.all()}
    expired = await session.exec(
        select(func.count())
        .select_from(Job)
        .where(col(Job.status) == JobStatus.running, col(Job.locked_until) < now)
    )
    failed = await session.exec(
        select(func.count()).select_from(Job).where(col(Job.status) == JobStatus.failed)
    )
    return DatabaseSnapshot(
        trainings=trainings,
        jobs_due=jobs_due,
        jobs_running=jobs_running,
        jobs_expired_leases=int(expired.one()),
        jobs_failed=int(failed.one()),
        oldest_due_age_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
    )


class DatabaseCollector(Collector):
    """Serves the last snapshot; :meth:`refresh` takes a new one when it is stale."""

    def __init__(
        self,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._monotonic = monotonic
        self._snapshot: DatabaseSnapshot | None = None
        self._taken_at: float | None = None
        self._lock = asyncio.Lock()

    def is_fresh(self) -> bool:
        return self._taken_at is not None and self._monotonic() - self._taken_at < self.ttl_seconds

    async def refresh(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        if self.is_fresh():
            return
        async with self._lock:
            if not self.is_fresh():
                await self._load(sessionmaker)

    async def _load(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        try:
            async with session_scope(sessionmaker) as session:
                self._snapshot = await take_snapshot(session, now=utcnow())
        except Exception:
            # A scrape must not fail because the database does: it reports "down" instead.
            logger.warning("metrics.database_query_failed", exc_info=True)
            self._snapshot = None
        # Set after a failure too, so a database outage is not hammered by every scrape.
        self._taken_at = self._monotonic()

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot
        up = GaugeMetricFamily(
            "avatar_metrics_database_up",
            "1 when the last scrape-time database query succeeded, else 0.",
            value=1 if snapshot is not None else 0,
        )
        yield up
        if snapshot is None:
            return
        trainings = GaugeMetricFamily(
            "avatar_trainings", "Trainings by status and type.", labels=["status", "type"]
        )
        for (status, training_type), count in sorted(snapshot.trainings.items()):
            trainings.add_metric([status, training_type], count)
        yield trainings
        due = GaugeMetricFamily(
            "avatar_jobs_due", "Pending jobs whose run time has come, by kind.", labels=["kind"]
        )
        for kind, count in sorted(snapshot.jobs_due.items()):
            due.add_metric([kind], count)
        yield due
        running = GaugeMetricFamily(
            "avatar_jobs_running", "Jobs leased to a worker, by kind.", labels=["kind"]
        )
        for kind, count in sorted(snapshot.jobs_running.items()):
            running.add_metric([kind], count)
        yield running
        yield GaugeMetricFamily(
            "avatar_jobs_oldest_due_age_seconds",
            "How long the oldest due pending job has waited for a worker (0 when none).",
            value=snapshot.oldest_due_age_seconds,
        )
        yield GaugeMetricFamily(
            "avatar_jobs_expired_leases",
            "Running jobs whose lease has expired (their worker died or hangs).",
            value=snapshot.jobs_expired_leases,
        )
        yield GaugeMetricFamily(
            "avatar_jobs_failed",
            "Jobs that gave up (kept for inspection).",
            value=snapshot.jobs_failed,
        )


class StandaloneDatabaseCollector(DatabaseCollector):
    """For the separate metrics port, whose HTTP server calls ``collect`` from its threads.

    It has no event loop of its own, so a stale snapshot is refreshed in a short
    ``asyncio.run`` with a throwaway engine (one connection per refresh).
    """

    def __init__(self, settings: Settings, *, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        super().__init__(ttl_seconds=ttl_seconds)
        self._settings = settings
        self._thread_lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._thread_lock:
            if not self.is_fresh():
                asyncio.run(self._load_with_own_engine())
        return super().collect()

    async def _load_with_own_engine(self) -> None:
        engine = create_engine(self._settings)
        try:
            await self._load(create_sessionmaker(engine))
        finally:
            await engine.dispose()
