"""Caller notifications for finished generations (Standard Webhooks, via the outbox)."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.generations.service import to_read
from avatar_api.models import Avatar, Generation, GenerationStatus
from avatar_api.services import Services
from avatar_api.webhooks.events import WebhookEventType, emit_event

_EVENT_FOR_STATUS = {
    GenerationStatus.completed: WebhookEventType.generation_completed,
    GenerationStatus.failed: WebhookEventType.generation_failed,
}


async def notify(
    session: AsyncSession, services: Services, generation: Generation, avatar: Avatar
) -> None:
    """Emit the event for the generation's current status, if that status has one.

    The image URLs in the event expire like any download URL; GET the generation for
    fresh ones.
    """
    event_type = _EVENT_FOR_STATUS.get(generation.status)
    if event_type is None:
        return
    read = await to_read(generation, services)
    await emit_event(
        session,
        tenant_id=generation.tenant_id,
        event_type=event_type,
        data={
            "avatar_id": str(avatar.id),
            "external_user_id": avatar.external_user_id,
            "generation": read.model_dump(mode="json"),
        },
    )
