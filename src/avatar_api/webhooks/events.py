"""The events we send to callers, and how a domain change emits one.

Emitting writes one delivery row and one ``webhook.deliver`` job per subscribed endpoint
in the caller's transaction (transactional outbox): an event is sent if and only if the
change that caused it commits.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.jobs.queue import enqueue
from avatar_api.models import WebhookDelivery, WebhookEndpoint
from avatar_api.webhooks import repository

DELIVER_JOB_KIND = "webhook.deliver"
# The delivery handler itself gives up after AVATAR_WEBHOOK_MAX_ATTEMPTS (read when it runs,
# so a changed setting applies to queued deliveries too). The job's own cap must stay above
# the setting's upper bound; it only ends jobs that keep failing before they reach the
# receiver (a bug, the database being down).
DELIVER_JOB_MAX_ATTEMPTS = 40


class WebhookEventType(StrEnum):
    avatar_training_queued = "avatar.training.queued"
    avatar_training_started = "avatar.training.started"
    avatar_training_completed = "avatar.training.completed"
    avatar_training_failed = "avatar.training.failed"
    avatar_training_cancelled = "avatar.training.cancelled"
    avatar_deleted = "avatar.deleted"
    generation_completed = "generation.completed"
    generation_failed = "generation.failed"
    webhook_test = "webhook.test"


def new_event_id() -> str:
    """A ``webhook-id``: one per event, kept across retries so receivers can deduplicate."""
    return f"msg_{uuid.uuid4().hex}"


def build_payload(
    event_type: WebhookEventType, data: Mapping[str, object], *, now: datetime
) -> dict[str, Any]:
    """The Standard Webhooks body: ``{"type", "timestamp", "data"}``.

    ``data`` may hold ids, datetimes and enums; they become JSON strings here, so what is
    stored is exactly what every attempt sends. Raises ``TypeError`` for anything else.
    """
    try:
        # allow_nan=False: NaN is not JSON, and PostgreSQL's json type refuses it.
        jsonable = json.loads(json.dumps(to_jsonable_python(dict(data)), allow_nan=False))
    except (PydanticSerializationError, ValueError) as exc:
        raise TypeError(f"webhook event data is not JSON-serialisable: {exc}") from exc
    timestamp = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"type": event_type.value, "timestamp": timestamp, "data": jsonable}


async def queue_delivery(
    session: AsyncSession,
    *,
    endpoint: WebhookEndpoint,
    event_id: str,
    event_type: WebhookEventType,
    payload: Mapping[str, Any],
    now: datetime,
) -> WebhookDelivery:
    """Add one delivery of an event to ``endpoint`` and its job; flushes, never commits."""
    delivery = WebhookDelivery(
        tenant_id=endpoint.tenant_id,
        endpoint_id=endpoint.id,
        event_id=event_id,
        event_type=event_type.value,
        payload=dict(payload),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    await session.flush()
    await enqueue(
        session,
        kind=DELIVER_JOB_KIND,
        payload={"delivery_id": str(delivery.id)},
        run_at=now,
        max_attempts=DELIVER_JOB_MAX_ATTEMPTS,
    )
    return delivery


async def emit_event(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    event_type: WebhookEventType,
    data: Mapping[str, object],
) -> int:
    """Queue ``event_type`` for every enabled endpoint of the tenant subscribed to it.

    Runs in the caller's transaction: the deliveries and their jobs commit with the change
    that caused the event, or not at all. Every endpoint gets the same ``webhook-id`` and
    body. Returns how many deliveries were queued (0 when nobody listens).
    """
    now = utcnow()
    payload = build_payload(event_type, data, now=now)
    endpoints = [
        endpoint
        for endpoint in await repository.enabled_endpoints(session, tenant_id=tenant_id)
        if event_type.value in endpoint.events
    ]
    event_id = new_event_id()
    for endpoint in endpoints:
        await queue_delivery(
            session,
            endpoint=endpoint,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            now=now,
        )
    return len(endpoints)
