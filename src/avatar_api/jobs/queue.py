"""Enqueueing: a job row written in the caller's transaction (transactional outbox)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.jobs.registry import validate_kind_name
from avatar_api.models.job import ACTIVE_JOB_STATUSES, DEDUPE_KEY_MAX_LENGTH, Job, JobStatus

JOBS_TABLE: Table = Job.__table__  # type: ignore[attr-defined]
# Built once: SQLAlchemy then reuses its compiled form for every enqueue_row() call.
_INSERT_JOB = insert(JOBS_TABLE)


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
    _check(kind, run_at=run_at, max_attempts=max_attempts)
    if dedupe_key is not None and not 0 < len(dedupe_key) <= DEDUPE_KEY_MAX_LENGTH:
        raise ValueError(f"dedupe_key must be 1-{DEDUPE_KEY_MAX_LENGTH} characters")
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


def job_row(
    *,
    kind: str,
    payload: Mapping[str, object],
    run_at: datetime | None = None,
    max_attempts: int | None = None,
) -> dict[str, Any]:
    """The ``jobs`` row :func:`enqueue` would write (no ``dedupe_key``), for a Core insert.

    The same checks, JSON payload and defaults, without building an ORM object. It sets
    every column whose default is not NULL, so its keys never vary: one compiled
    statement serves every call.
    """
    _check(kind, run_at=run_at, max_attempts=max_attempts)
    now = utcnow()
    return {
        "id": uuid.uuid4(),
        "kind": kind,
        "payload": _json_object(payload),
        "status": JobStatus.pending,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_at": run_at or now,
        "created_at": now,
        "updated_at": now,
    }


async def enqueue_row(
    connection: AsyncConnection,
    *,
    kind: str,
    payload: Mapping[str, object],
    run_at: datetime | None = None,
    max_attempts: int | None = None,
) -> uuid.UUID:
    """:func:`enqueue` for hot paths: one Core ``INSERT`` of :func:`job_row`.

    Pass ``await session.connection()`` so that the job joins the session's transaction
    and commits (or rolls back) with it. Returns the new job's id.
    """
    row = job_row(kind=kind, payload=payload, run_at=run_at, max_attempts=max_attempts)
    await connection.execute(_INSERT_JOB, row)
    job_id: uuid.UUID = row["id"]
    return job_id


def _check(kind: str, *, run_at: datetime | None, max_attempts: int | None) -> None:
    validate_kind_name(kind)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")


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
