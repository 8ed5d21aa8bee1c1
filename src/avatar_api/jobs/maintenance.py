"""Housekeeping for the jobs table."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.models.job import Job, JobStatus


async def purge_finished(
    session: AsyncSession, older_than: timedelta, *, now: datetime | None = None
) -> int:
    """Delete succeeded jobs that finished more than ``older_than`` ago; return how many.

    Failed jobs are kept: they are the record of what gave up and why. Runs in the
    caller's transaction (no commit).
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = (now or utcnow()) - older_than
    result = await session.exec(
        delete(Job).where(
            col(Job.status) == JobStatus.succeeded,
            col(Job.finished_at) < cutoff,
        )
    )
    return result.rowcount
