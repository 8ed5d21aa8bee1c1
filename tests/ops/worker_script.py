"""A worker process for the lifecycle tests: the real ``avatar-api worker`` loop (signals,
grace period, lease handling) running one test-only job kind, ``ops.sleep``.

``python -m tests.ops.worker_script``; settings come from the environment like the CLI's,
plus ``OPS_SLEEP_SECONDS``, how long a job's first run sleeps (later runs do not). A run
records ``started`` in its own committed transaction before sleeping, then ``done``
through the job's session, so ``done`` commits if and only if the job's success does.
"""

from __future__ import annotations

import asyncio
import os
import time

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, func, insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.cli import _run_worker
from avatar_api.db import session_scope
from avatar_api.jobs.registry import JobContext, JobKind, JobRegistry
from avatar_api.logging_setup import configure_logging
from avatar_api.settings import Settings

SLEEP_KIND = "ops.sleep"
# Not in SQLModel.metadata: test_migrations compares that with the migrated schema.
metadata = MetaData()
effects = Table(
    "ops_test_effects",
    metadata,
    Column("job_id", String(64), nullable=False),
    Column("tag", String(16), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("at", Float, nullable=False),
)


async def _record(session: AsyncSession, job_id: str, tag: str) -> None:
    await session.exec(
        insert(effects).values(job_id=job_id, tag=tag, pid=os.getpid(), at=time.time())
    )


async def sleep_job(ctx: JobContext) -> None:
    job_id = str(ctx.job.id)
    async with session_scope(ctx.services.sessionmaker) as session:
        earlier = await session.exec(
            select(func.count()).select_from(effects).where(effects.c.job_id == job_id)
        )
        first_run = earlier.one() == 0
        await _record(session, job_id, "started")
    if first_run:
        # Only the first run is slow: the test stops that worker, and whichever worker
        # takes the job over finishes it at once.
        await asyncio.sleep(float(os.environ.get("OPS_SLEEP_SECONDS", "0")))
    await _record(ctx.session, job_id, "done")


def main() -> None:
    settings = Settings()
    configure_logging(level="INFO", fmt="json")
    registry = JobRegistry([JobKind(SLEEP_KIND, sleep_job)])
    asyncio.run(_run_worker(settings, concurrency=1, registry=registry, reconcile=False))


if __name__ == "__main__":
    main()
