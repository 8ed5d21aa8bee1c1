"""Enqueueing: a job row written in the caller's transaction (transactional outbox)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.jobs.registry import validate_kind_name
from avatar_api.models.job import ACTIVE_JOB_STATUSES, DEDUPE_KEY_MAX_LENGTH, Job


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    payload: Mapping[str, object],
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Add a job to ``session``'s transaction; it becomes visible to workers on commit.

    Only adds and flushes: the caller's single commit writes the job together with the
    state change that needs it, and a rollback leaves no job behind. ``payload`` must be
    JSON-serialisable (pass ids as strings). ``run_at`` defaults to now. ``max_attempts``
    ``None`` takes the worker's configured default.

    With a ``dedupe_key`` that already has a pending or running job, that job is returned
    and nothing is added (compare ``job.id`` to tell). A finished job does not block the key.
    """
    validate_kind_name(kind)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if dedupe_key is not None and not 0 < len(dedupe_key) <= DEDUPE_KEY_MAX_LENGTH:
        raise ValueError(f"dedupe_key must be 1-{DEDUPE_KEY_MAX_LENGTH} characters")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    job = Job(
        kind=kind,
        payload=_json_object(payload),
        run_at=run_at or utcnow(),
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
    )
    if dedupe_key is None:
        session.add(job)
        await session.flush()
        return job

    existing = await _active_job(session, dedupe_key)
    if existing is not None:
        return existing
    try:
        # The check above races with concurrent enqueuers; the partial unique index is the
        # arbiter. The savepoint keeps the caller's transaction usable when we lose.
        async with session.begin_nested():
            session.add(job)
    except IntegrityError:
        existing = await _active_job(session, dedupe_key)
        if existing is None:
            # The winner finished between its insert and our re-read (or the conflict was
            # something else): surface the original error rather than guess.
            raise
        return existing
    return job


async def _active_job(session: AsyncSession, dedupe_key: str) -> Job | None:
    result = await session.exec(
        select(Job).where(
            Job.dedupe_key == dedupe_key,
            col(Job.status).in_(ACTIVE_JOB_STATUSES),
        )
    )
    return result.first()


def _json_object(payload: Mapping[str, object]) -> dict[str, Any]:
    # Round-trip now, so a payload that cannot be stored fails here, in the caller's code,
    # and the handler sees exactly what a reload from the database would give.
    try:
        data: dict[str, Any] = json.loads(json.dumps(dict(payload), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job payload is not JSON-serialisable: {exc}") from exc
    return data
