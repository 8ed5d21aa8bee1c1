"""Receiving fal's webhooks: verify, check it is ours, store once, let a job apply it.

Verification happens before anything is parsed or stored. A valid signature is not enough
(fal signs every customer's webhooks with the same keys): the URL's per-training token
must match, the request id must be one we created for that training, and the user id
must be ours when configured.

fal delivers at least once. The unique (request id, body hash) key of the events table
decides which copy stores the event and its apply job, so copies never queue on a row
lock; on PostgreSQL the usual delivery is one atomic statement (:func:`store_once`).
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Insert, Row, Select, Table, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import insert_on, utcnow
from avatar_api.errors import AppError, PayloadTooLarge, ServiceUnavailable
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.fal.webhook_signature import (
    FalWebhookVerifier,
    JwksUnavailable,
    VerifiedFalWebhook,
    WebhookSignatureError,
)
from avatar_api.jobs.queue import JOBS_TABLE, enqueue_row, job_row
from avatar_api.models import FalWebhookEvent, Training, TrainingStatus
from avatar_api.observability.metrics import FAL_WEBHOOKS
from avatar_api.settings import Settings
from avatar_api.training.state import TERMINAL
from avatar_api.training.tasks import APPLY_EVENT_JOB
from avatar_api.training.tokens import token_matches

logger = logging.getLogger("avatar_api.webhooks.fal")

MAX_BODY_BYTES = 1024 * 1024


class FalWebhookRejected(AppError):
    status_code = 401
    code = "fal_webhook_rejected"
    title = "Webhook rejected"


class FalWebhookTooLarge(PayloadTooLarge):
    code = "fal_webhook_too_large"
    title = "Webhook body too large"


class JwksUnreachable(ServiceUnavailable):
    code = "fal_jwks_unavailable"
    title = "Cannot verify webhooks right now"


def _reject(reason: str, **context: object) -> FalWebhookRejected:
    logger.warning("fal.webhook_rejected", extra={"reason": reason, **context})
    FAL_WEBHOOKS.labels(result=reason).inc()
    return FalWebhookRejected("The webhook could not be authenticated.")


async def read_capped(stream: AsyncIterator[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            FAL_WEBHOOKS.labels(result="too_large").inc()
            raise FalWebhookTooLarge(f"Webhook bodies are limited to {limit} bytes.")
    return bytes(body)


async def authenticate_fal_webhook(
    *,
    settings: Settings,
    verifier: FalWebhookVerifier,
    token_ok: bool,
    headers: Mapping[str, str],
    body: bytes,
    context: Mapping[str, str],
) -> tuple[VerifiedFalWebhook, dict[str, Any]]:
    """Everything that proves a webhook is fal's and about our request, before any storing.

    Shared by every fal webhook route (trainings, generations): signature and timestamp,
    then the per-row URL token (``token_ok``), the configured fal user, and a body whose
    request id is the signed one.
    """
    try:
        verified = await verifier.verify(headers, body)
    except WebhookSignatureError as exc:
        raise _reject(exc.reason, **context) from exc
    except JwksUnavailable as exc:
        logger.error("fal.webhook_jwks_unavailable", extra=dict(context))
        FAL_WEBHOOKS.labels(result="jwks_unavailable").inc()
        raise JwksUnreachable("fal's signing keys cannot be fetched; retry later.") from exc
    if not token_ok:
        raise _reject("bad_token", **context)
    if settings.fal_webhook_user_id and verified.user_id != settings.fal_webhook_user_id:
        raise _reject("wrong_user", **context)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _reject("bad_json", **context) from exc
    if not isinstance(document, dict) or document.get("request_id") != verified.request_id:
        raise _reject("request_id_mismatch", **context)
    return verified, document


async def receive_fal_webhook(
    session: AsyncSession,
    *,
    settings: Settings,
    verifier: FalWebhookVerifier,
    training_id: uuid.UUID,
    token: str,
    headers: Mapping[str, str],
    body: bytes,
) -> bool:
    """Store a verified webhook once; returns False for a duplicate delivery."""
    context = {"training_id": str(training_id)}
    verified, document = await authenticate_fal_webhook(
        settings=settings,
        verifier=verifier,
        token_ok=token_matches(settings, training_id, token),
        headers=headers,
        body=body,
        context=context,
    )

    async def lock() -> LockedFalRow | None:
        training = await session.get(
            Training, training_id, with_for_update={"key_share": True}, populate_existing=True
        )
        if training is None:
            return None
        return LockedFalRow(
            training,
            submitting=training.status is TrainingStatus.submitting,
            ended=training.status in TERMINAL,
        )

    return await store_once(
        session,
        target=TRAINING_WEBHOOKS,
        row_id=training_id,
        verified=verified,
        document=document,
        lock=lock,
        context=context,
    )


@dataclass(frozen=True)
class FalWebhookTarget:
    """Where one kind of fal webhook goes: the rows that submit to fal, and their events."""

    rows: Table  # has id, request_id
    events: Table  # unique (request_id, body_sha256)
    row_column: str  # the events' foreign key to ``rows``
    apply_job: str
    unknown: str  # the rejection reason when the row does not exist


TRAINING_WEBHOOKS = FalWebhookTarget(
    rows=Training.__table__,  # type: ignore[attr-defined]
    events=FalWebhookEvent.__table__,  # type: ignore[attr-defined]
    row_column="training_id",
    apply_job=APPLY_EVENT_JOB,
    unknown="unknown_training",
)


class _FalRequestRow(Protocol):
    request_id: str | None
    endpoint: str
    submit_started_at: datetime | None


@dataclass(frozen=True)
class LockedFalRow:
    """A row that submitted to fal (a training, a generation), locked FOR UPDATE."""

    row: _FalRequestRow
    submitting: bool
    ended: bool


async def store_once(
    session: AsyncSession,
    *,
    target: FalWebhookTarget,
    row_id: uuid.UUID,
    verified: VerifiedFalWebhook,
    document: Mapping[str, Any],
    lock: Callable[[], Awaitable[LockedFalRow | None]],
    context: Mapping[str, str],
) -> bool:
    """Store a verified event and its apply job once; False (nothing new) for a re-delivery.

    First :func:`match_request` (the signed request must be the row's), then one
    ``INSERT ... ON CONFLICT (request_id, body_sha256) DO NOTHING`` decides: concurrent
    copies of one delivery wait on the unique index for the first one's transaction and
    find its row once it commits (or insert their own if it rolled back). ``lock()`` locks
    and returns the row ``row_id``, for the rare adoption of a request id.

    On PostgreSQL the usual case (the row already carries the signed request id) is a
    single statement doing all of that (see :func:`_store_once_pg`). Being one statement,
    it is atomic on its own, so it runs in autocommit outside the request's transaction:
    no BEGIN and COMMIT round trips, and it is committed before the 2xx is sent. Anything
    else (no such row, another request, a request id to adopt) falls back to the request's
    session and its single commit.
    """
    event = _event_row(target, row_id, verified, document)
    job_payload = {"event_id": str(event["id"])}
    if session.get_bind().dialect.name == "postgresql":
        job = job_row(kind=target.apply_job, payload=job_payload)
        params = {
            _ROW_PARAM: row_id,
            **{key: value for key, value in event.items() if key != target.row_column},
            **{_JOB_PARAM + key: value for key, value in job.items()},
        }
        found = await _execute_atomic(session, _store_once_pg(target), params)
        if found is not None and found.request_id == verified.request_id:
            return _stored(bool(found.stored), event, context)
        # Nothing was written; match_request() rejects or adopts.

    connection = await session.connection()
    await match_request(
        session,
        connection,
        target=target,
        row_id=row_id,
        request_id=verified.request_id,
        lock=lock,
        context=context,
    )
    inserted = await connection.execute(_insert_once(connection.dialect.name, target), event)
    if inserted.first() is not None:
        await enqueue_row(connection, kind=target.apply_job, payload=job_payload)
        return _stored(True, event, context)
    return _stored(False, event, context)


async def _execute_atomic(
    session: AsyncSession, statement: Select[Any], params: Mapping[str, Any]
) -> Row[Any] | None:
    """The first row of one self-contained write statement, committed when this returns.

    On its own pooled connection in autocommit when the session is bound to an engine and
    has not started a transaction; otherwise (tests bind sessions to an outer transaction)
    in the session's transaction, committed with it.
    """
    bind = session.bind
    row: Row[Any] | None
    if isinstance(bind, AsyncEngine) and not session.in_transaction():
        async with bind.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            row = (await connection.execute(statement, params)).first()
        return row
    connection = await session.connection()
    row = (await connection.execute(statement, params)).first()
    return row


async def match_request(
    session: AsyncSession,
    connection: AsyncConnection,
    *,
    target: FalWebhookTarget,
    row_id: uuid.UUID,
    request_id: str,
    lock: Callable[[], Awaitable[LockedFalRow | None]],
    context: Mapping[str, str],
) -> None:
    """Require that the signed request id is the one fal created for the row ``row_id``.

    A request id, once set, never changes: when the row has one, a plain read decides,
    and deliveries of one request do not queue behind each other on a row lock.

    When our submit call lost fal's reply, the row has no request id yet: ``lock()`` locks
    and re-reads it (concurrent deliveries take turns there; the first adopts), and the
    signed webhook carrying the row's token tells us which request fal created, which is
    adopted. A row that ended meanwhile (cancelled, or given up as lost) keeps its status;
    fal's copy is stopped instead.
    """
    known = (await connection.execute(_request_id_query(target.rows), {"id": row_id})).first()
    if known is None:
        raise _reject(target.unknown, **context)
    if known.request_id == request_id:
        return
    if known.request_id is not None:
        raise _reject("unknown_request", **context)

    locked = await lock()
    if locked is None:
        raise _reject(target.unknown, **context)
    row = locked.row
    attempted = locked.submitting or (locked.ended and row.submit_started_at is not None)
    if row.request_id is None and attempted:
        row.request_id = request_id
        session.add(row)
        if locked.ended:
            await enqueue_cleanup(
                session, endpoint=row.endpoint, request_id=request_id, cancel=True
            )
        # Written now, before the event that names the request.
        await session.flush()
        logger.warning("fal.webhook_adopted_request", extra={**context, "request_id": request_id})
    elif row.request_id != request_id:
        # Not submitted yet (nothing can be ours), or another delivery adopted another id.
        raise _reject("unknown_request", **context)


def _event_row(
    target: FalWebhookTarget,
    row_id: uuid.UUID,
    verified: VerifiedFalWebhook,
    document: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        target.row_column: row_id,
        "request_id": verified.request_id,
        "body_sha256": verified.body_sha256,
        "status": str(document.get("status", ""))[:16],
        "body": document,
        "received_at": utcnow(),
    }


def _stored(new: bool, event: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    extra = {**context, "request_id": event["request_id"]}
    if new:
        FAL_WEBHOOKS.labels(result="accepted").inc()
        logger.info("fal.webhook_received", extra={**extra, "status": event["status"]})
    else:
        # fal delivers at least once: a re-delivery is routine, and counted.
        FAL_WEBHOOKS.labels(result="duplicate").inc()
        logger.debug("fal.webhook_duplicate", extra=extra)
    return new


_UNIQUE_KEY = ["request_id", "body_sha256"]
_JOB_PARAM = "job_"
_ROW_PARAM = "row_id"

# Statements are built once per target (and backend): SQLAlchemy then reuses their
# compiled form, and asyncpg its prepared statement, for every delivery.


@functools.cache
def _request_id_query(rows: Table) -> Select[tuple[str | None]]:
    # No lock: lock() may have to take FOR UPDATE next, and two deliveries each holding a
    # share lock while waiting for the other's to go would deadlock.
    return select(rows.c.request_id).where(rows.c.id == bindparam("id"))


@functools.cache
def _insert_once(dialect: str, target: FalWebhookTarget) -> Insert:
    events = target.events
    return (
        insert_on(dialect, events)
        .on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
        .returning(events.c.id)
    )


@functools.cache
def _store_once_pg(target: FalWebhookTarget) -> Select[tuple[str | None, int]]:
    """match + insert-once + enqueue as one PostgreSQL statement (data-modifying CTEs).

    Answers no row when ``rows`` has no such id; otherwise the row's request id, and
    ``stored`` = 1 when the event and its job were inserted, 0 when the event was already
    there (a re-delivery) or the request id differs (then nothing is written).

    The row is read ``FOR KEY SHARE``, which blocks no reader, no other delivery and no
    writer (writers lock trainings and generations ``FOR NO KEY UPDATE``), only its
    deletion: a row deleted meanwhile is seen as gone (a 401), instead of failing the
    event's foreign key (a 500).
    """
    rows, events = target.rows, target.events
    owner = (
        select(rows.c.id, rows.c.request_id)
        .where(rows.c.id == bindparam(_ROW_PARAM))
        .with_for_update(read=True, key_share=True)
        .cte("owner")
    )
    event_columns = ["id", target.row_column, "request_id", "body_sha256", "status", "body"]
    event_columns.append("received_at")
    values = [
        owner.c.id if name == target.row_column else bindparam(name, type_=events.c[name].type)
        for name in event_columns
    ]
    event = (
        postgresql.insert(events)
        .from_select(
            event_columns,
            select(*values).where(owner.c.request_id == bindparam("request_id")),
        )
        .on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
        .returning(events.c.id)
        .cte("event")
    )
    job_columns = list(job_row(kind=target.apply_job, payload={}))
    job = (
        insert(JOBS_TABLE)
        .from_select(
            job_columns,
            select(
                *(
                    bindparam(_JOB_PARAM + name, type_=JOBS_TABLE.c[name].type)
                    for name in job_columns
                )
            ).select_from(event),
        )
        .returning(JOBS_TABLE.c.id)
        .cte("job")
    )
    stored = select(func.count()).select_from(job).scalar_subquery()
    return select(owner.c.request_id, stored.label("stored"))
