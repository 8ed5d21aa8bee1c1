"""Receiving fal's webhooks about generations: verify, check it is ours, store once.

The same checks as for trainings (:mod:`avatar_api.webhooks.fal_service`): a valid
signature is not enough (fal signs every customer's webhooks with the same keys), so the
URL's per-generation token must match, the request id must be the one we created, and the
user id must be ours when configured. A job applies the stored event.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.fal.webhook_signature import (
    FalWebhookVerifier,
)
from avatar_api.generations import repository
from avatar_api.generations.state import TERMINAL
from avatar_api.generations.tasks import APPLY_JOB
from avatar_api.generations.tokens import token_matches
from avatar_api.models import GenerationStatus, GenerationWebhookEvent
from avatar_api.observability.metrics import FAL_WEBHOOKS
from avatar_api.settings import Settings
from avatar_api.webhooks.fal_service import (
    FalWebhookRejected,
    authenticate_fal_webhook,
    match_request,
    store_once,
)

logger = logging.getLogger("avatar_api.webhooks.fal")


def _reject(reason: str, generation_id: uuid.UUID) -> FalWebhookRejected:
    logger.warning(
        "fal.webhook_rejected", extra={"reason": reason, "generation_id": str(generation_id)}
    )
    FAL_WEBHOOKS.labels(result=reason).inc()
    return FalWebhookRejected("The webhook could not be authenticated.")


async def receive_generation_webhook(
    session: AsyncSession,
    *,
    settings: Settings,
    verifier: FalWebhookVerifier,
    generation_id: uuid.UUID,
    token: str,
    headers: Mapping[str, str],
    body: bytes,
) -> bool:
    """Store a verified webhook once; returns False for a duplicate delivery."""
    verified, document = await authenticate_fal_webhook(
        settings=settings,
        verifier=verifier,
        token_ok=token_matches(settings, generation_id, token),
        headers=headers,
        body=body,
        context={"generation_id": str(generation_id)},
    )

    generation = await repository.lock(session, generation_id=generation_id)
    if generation is None:
        raise _reject("unknown_generation", generation_id)
    await match_request(
        session,
        generation,
        verified.request_id,
        submitting=generation.status is GenerationStatus.submitting,
        ended=generation.status in TERMINAL,
        context={"generation_id": str(generation_id)},
    )
    event = GenerationWebhookEvent(
        generation_id=generation_id,
        request_id=verified.request_id,
        body_sha256=hashlib.sha256(body).hexdigest(),
        status=str(document.get("status", ""))[:16],
        body=document,
    )
    return await store_once(
        session, event, apply_job=APPLY_JOB, context={"generation_id": str(generation_id)}
    )
