"""Receiving fal's webhooks about generations: verify, check it is ours, store once.

The same checks as for trainings (:mod:`avatar_api.webhooks.fal_service`): a valid
signature is not enough (fal signs every customer's webhooks with the same keys), so the
URL's per-generation token must match, the request id must be the one we created, and the
user id must be ours when configured. A job applies the stored event.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.fal.webhook_signature import FalWebhookVerifier
from avatar_api.generations import repository
from avatar_api.generations.state import TERMINAL
from avatar_api.generations.tasks import APPLY_JOB
from avatar_api.generations.tokens import token_matches
from avatar_api.models import Generation, GenerationStatus, GenerationWebhookEvent
from avatar_api.settings import Settings
from avatar_api.webhooks.fal_service import (
    FalWebhookTarget,
    LockedFalRow,
    authenticate_fal_webhook,
    store_once,
)

GENERATION_WEBHOOKS = FalWebhookTarget(
    rows=Generation.__table__,  # type: ignore[attr-defined]
    events=GenerationWebhookEvent.__table__,  # type: ignore[attr-defined]
    row_column="generation_id",
    apply_job=APPLY_JOB,
    unknown="unknown_generation",
)


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
    context = {"generation_id": str(generation_id)}
    verified, document = await authenticate_fal_webhook(
        settings=settings,
        verifier=verifier,
        token_ok=token_matches(settings, generation_id, token),
        headers=headers,
        body=body,
        context=context,
    )

    async def lock() -> LockedFalRow | None:
        generation = await repository.lock(session, generation_id=generation_id)
        if generation is None:
            return None
        return LockedFalRow(
            generation,
            submitting=generation.status is GenerationStatus.submitting,
            ended=generation.status in TERMINAL,
        )

    return await store_once(
        session,
        target=GENERATION_WEBHOOKS,
        row_id=generation_id,
        verified=verified,
        document=document,
        lock=lock,
        context=context,
    )
