"""The process's Prometheus metrics, and small helpers that record them.

Counters and histograms live in prometheus-client's default registry (one per process,
next to its process and GC collectors). What describes the database rather than the
process (trainings by status, the job queue) is read at scrape time by
:mod:`avatar_api.observability.collector`.

Labels are bounded on purpose: route templates (never raw paths), outcome names, status
names. No tenant, key or training id is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from avatar_api.models import Avatar, Training

HTTP_REQUESTS = Counter(
    "avatar_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "avatar_http_request_duration_seconds",
    "Time to answer an HTTP request (body included), by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FAL_CALLS = Counter(
    "avatar_fal_calls_total",
    "Calls to fal.ai (backend=fal) or its test-mode simulator, by operation and outcome.",
    ["backend", "operation", "outcome"],
)
FAL_CALL_SECONDS = Histogram(
    "avatar_fal_call_duration_seconds",
    "Duration of one call to fal (retries inside the call included).",
    ["backend", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TRAINING_SECONDS = Histogram(
    "avatar_training_duration_seconds",
    "Time from queued to a terminal status, by training type and final status.",
    ["type", "status"],
    buckets=(60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 21600),
)
FAL_WEBHOOKS = Counter(
    "avatar_fal_webhooks_total",
    "Webhooks received from fal, by verification result (accepted, duplicate, or why not).",
    ["result"],
)
WEBHOOK_DELIVERIES = Counter(
    "avatar_webhook_deliveries_total",
    "Outbound webhook delivery attempts to callers' endpoints, by outcome.",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "avatar_rate_limited_total", "Requests refused by the per-API-key rate limit."
)
UPLOADS_BUSY = Counter(
    "avatar_uploads_busy_total", "Uploads refused because the temp-disk budget was in use."
)
QUOTA_REJECTIONS = Counter(
    "avatar_quota_rejections_total", "Trainings refused by a tenant quota, by quota.", ["quota"]
)


class _ProcessMetrics(Collector):
    """Forwards the default registry (this module's metrics, process and GC)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def build_registry(*collectors: Collector) -> CollectorRegistry:
    """The process's metrics plus ``collectors`` (per app, or per metrics server)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    for collector in collectors:
        registry.register(collector)
    return registry


def build_app_registry(collector: Collector) -> CollectorRegistry:
    return build_registry(collector)


# --- training durations, observed once the terminal status has committed ----------------------

_PENDING_KEY = "avatar_api.metrics.pending_training_durations"


def observe_training_finished(session: AsyncSession, training: Training, avatar: Avatar) -> None:
    """Observe the training's duration when the transaction that ended it commits.

    Observing at once would count a terminal status twice when its transaction rolls
    back and a retry (or another worker) applies it again.
    """
    if training.completed_at is None:
        return
    seconds = max(0.0, (training.completed_at - training.created_at).total_seconds())
    pending: list[tuple[str, str, float]] = session.info.setdefault(_PENDING_KEY, [])
    pending.append((avatar.training_type.value, training.status.value, seconds))


@event.listens_for(Session, "after_commit")
def _observe_committed(session: Session) -> None:
    for training_type, status, seconds in session.info.pop(_PENDING_KEY, ()):
        TRAINING_SECONDS.labels(type=training_type, status=status).observe(seconds)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    # A savepoint rolling back (a lost dedupe race in enqueue) leaves the outer
    # transaction, and what it will commit, intact.
    if not previous_transaction.nested:
        session.info.pop(_PENDING_KEY, None)
