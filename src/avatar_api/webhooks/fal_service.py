"""Receiving fal's webhooks: verify, check it is ours, store once, let a job apply it.

Verification happens before anything is parsed or stored. A valid signature is not enough
(fal signs every customer's webhooks with the same keys): the URL's per-training token
must match, the request id must be one we created for that training, and the user id
must be ours when configured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.errors import AppError, PayloadTooLarge, ServiceUnavailable
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.fal.webhook_signature import (
    FalWebhookVerifier,
    JwksUnavailable,
    VerifiedFalWebhook,
    WebhookSignatureError,
)
from avatar_api.jobs.queue import enqueue
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
    verified, document = await authenticate_fal_webhook(
        settings=settings,
        verifier=verifier,
        token_ok=token_matches(settings, training_id, token),
        headers=headers,
        body=body,
        context={"training_id": str(training_id)},
    )

    training = await session.get(Training, training_id, with_for_update=True)
    if training is None:
        raise _reject("unknown_training", training_id=str(training_id))
    await match_request(
        session,
        training,
        verified.request_id,
        submitting=training.status is TrainingStatus.submitting,
        ended=training.status in TERMINAL,
        context={"training_id": str(training_id)},
    )
    event = FalWebhookEvent(
        training_id=training_id,
        request_id=verified.request_id,
        body_sha256=hashlib.sha256(body).hexdigest(),
        status=str(document.get("status", ""))[:16],
        body=document,
    )
    return await store_once(
        session, event, apply_job=APPLY_EVENT_JOB, context={"training_id": str(training_id)}
    )


class _FalRequestRow(Protocol):
    request_id: str | None
    endpoint: str
    submit_started_at: datetime | None


class _StoredEvent(Protocol):
    id: uuid.UUID
    request_id: str
    status: str


async def match_request(
    session: AsyncSession,
    row: _FalRequestRow,
    request_id: str,
    *,
    submitting: bool,
    ended: bool,
    context: Mapping[str, str],
) -> None:
    """Require that the signed request id is the one fal created for ``row`` (locked).

    When our submit call lost fal's reply, the row has no request id yet: the signed webhook
    carrying the row's token tells us which request fal created, and it is adopted. A row
    that ended meanwhile (cancelled, or given up as lost) keeps its status; fal's copy is
    stopped instead.
    """
    attempted = submitting or (ended and row.submit_started_at is not None)
    if row.request_id is None and attempted:
        row.request_id = request_id
        session.add(row)
        if ended:
            await enqueue_cleanup(
                session, endpoint=row.endpoint, request_id=request_id, cancel=True
            )
        logger.warning("fal.webhook_adopted_request", extra={**context, "request_id": request_id})
    elif row.request_id != request_id:
        raise _reject("unknown_request", **context)


async def store_once(
    session: AsyncSession, event: _StoredEvent, *, apply_job: str, context: Mapping[str, str]
) -> bool:
    """Store a verified event and its apply job; False (nothing new) for a re-delivery."""
    try:
        async with session.begin_nested():
            session.add(event)
            await session.flush()
    except IntegrityError:
        logger.info("fal.webhook_duplicate", extra={**context, "request_id": event.request_id})
        FAL_WEBHOOKS.labels(result="duplicate").inc()
        return False
    await enqueue(session, kind=apply_job, payload={"event_id": str(event.id)})
    FAL_WEBHOOKS.labels(result="accepted").inc()
    logger.info(
        "fal.webhook_received",
        extra={**context, "request_id": event.request_id, "status": event.status},
    )
    return True
