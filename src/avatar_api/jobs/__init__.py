"""Durable jobs: a table in our own database, written in the caller's transaction.

Enqueue with :func:`enqueue` inside the unit of work that needs the job; run with a
:class:`Worker` over a :class:`JobRegistry` of :class:`JobKind` handlers.
"""

from avatar_api.jobs.errors import JobError, PermanentJobError, RetryableJobError
from avatar_api.jobs.maintenance import purge_finished
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import (
    GiveUpHandler,
    JobContext,
    JobHandler,
    JobKind,
    JobRegistry,
)
from avatar_api.jobs.worker import Worker, backoff_delay

__all__ = [
    "GiveUpHandler",
    "JobContext",
    "JobError",
    "JobHandler",
    "JobKind",
    "JobRegistry",
    "PermanentJobError",
    "RetryableJobError",
    "Worker",
    "backoff_delay",
    "enqueue",
    "purge_finished",
]
