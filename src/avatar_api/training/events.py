"""Caller notifications for training changes (Standard Webhooks, via the outbox)."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Avatar, Training, TrainingStatus
from avatar_api.webhooks.events import WebhookEventType, emit_event

_EVENT_FOR_STATUS = {
    TrainingStatus.queued: WebhookEventType.avatar_training_queued,
    TrainingStatus.in_progress: WebhookEventType.avatar_training_started,
    TrainingStatus.completed: WebhookEventType.avatar_training_completed,
    TrainingStatus.failed: WebhookEventType.avatar_training_failed,
    TrainingStatus.cancelled: WebhookEventType.avatar_training_cancelled,
}


async def notify(session: AsyncSession, training: Training, avatar: Avatar) -> None:
    """Emit the event for the training's current status, if that status has one."""
    event_type = _EVENT_FOR_STATUS.get(training.status)
    if event_type is None:
        return
    from avatar_api.training.service import to_read

    await emit_event(
        session,
        tenant_id=training.tenant_id,
        event_type=event_type,
        data={
            "avatar_id": str(avatar.id),
            "external_user_id": avatar.external_user_id,
            "avatar_status": avatar.status.value,
            "training": to_read(training).model_dump(mode="json"),
        },
    )
