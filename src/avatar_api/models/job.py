from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Text, text
from sqlmodel import Column, Field, SQLModel

from avatar_api.db import UTCDateTime, utcnow
from avatar_api.models.base import created_at_field, enum_column_type, id_field

KIND_MAX_LENGTH = 100
DEDUPE_KEY_MAX_LENGTH = 200
WORKER_ID_MAX_LENGTH = 200

# The same predicate on both backends; it must stay in step with ACTIVE_JOB_STATUSES.
_ACTIVE_SQL = "status IN ('pending', 'running')"


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


ACTIVE_JOB_STATUSES = (JobStatus.pending, JobStatus.running)


class Job(SQLModel, table=True):
    """One unit of background work, written in the transaction of the change that needs it.

    ``max_attempts`` is ``None`` when the job takes the worker's configured default
    (``AVATAR_JOB_MAX_ATTEMPTS``). ``lease_token`` is replaced at every claim; every write
    a worker makes to a claimed job compares it, so a worker that lost its lease cannot
    overwrite the outcome of the one that took over.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        # The claim query's access path: due pending jobs, and running ones with a lease.
        Index("ix_jobs_status_run_at", "status", "run_at"),
        # At most one pending/running job per dedupe key; finished ones do not count, so
        # the same key can be enqueued again once its job is done.
        Index(
            "uq_jobs_active_dedupe_key",
            "dedupe_key",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
    )

    id: uuid.UUID = id_field()
    kind: str = Field(max_length=KIND_MAX_LENGTH)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: JobStatus = Field(default=JobStatus.pending, sa_type=enum_column_type(JobStatus))
    attempts: int = Field(default=0)
    max_attempts: int | None = Field(default=None)
    run_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    locked_by: str | None = Field(default=None, max_length=WORKER_ID_MAX_LENGTH)
    lease_token: uuid.UUID | None = Field(default=None)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)
    dedupe_key: str | None = Field(default=None, max_length=DEDUPE_KEY_MAX_LENGTH)
    created_at: datetime = created_at_field()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
