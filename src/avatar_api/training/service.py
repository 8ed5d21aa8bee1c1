"""Training use cases behind the API: start, read, list, cancel."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars.service import get_avatar
from avatar_api.avatars.state import set_status as set_avatar_status
from avatar_api.jobs.queue import enqueue
from avatar_api.models import Avatar, AvatarStatus, Training, TrainingStatus
from avatar_api.pagination import Cursor
from avatar_api.photos.repository import count_for_avatar
from avatar_api.quotas import charge_training_start, check_training_quotas
from avatar_api.services import Services
from avatar_api.trainers import get_strategy
from avatar_api.trainers.service import photo_bounds
from avatar_api.training import repository
from avatar_api.training.errors import (
    NotEnoughPhotos,
    TooManyPhotos,
    TrainingNotAllowed,
    TrainingNotCancellable,
    TrainingNotFound,
)
from avatar_api.training.events import notify
from avatar_api.training.schemas import (
    TrainingPage,
    TrainingProgress,
    TrainingRead,
    TrainingResult,
    TrainingStart,
)
from avatar_api.training.state import ACTIVE, set_training_status

SUBMIT_JOB = "training.submit"
CANCEL_REMOTE_JOB = "training.cancel_remote"
STARTABLE = frozenset({AvatarStatus.draft, AvatarStatus.failed, AvatarStatus.cancelled})


def to_read(training: Training) -> TrainingRead:
    total, done = training.progress_total, training.progress_steps
    percent = round(100.0 * done / total, 1) if total and done is not None else None
    if training.status is TrainingStatus.completed:
        percent = 100.0
    result = None
    if training.status is TrainingStatus.completed:
        result = TrainingResult(
            kind="finetune" if training.finetune_id else "lora",
            lora_url=training.lora_url,
            lora_size=training.lora_size,
            config_url=training.config_url,
            finetune_id=training.finetune_id,
        )
    return TrainingRead(
        id=training.id,
        avatar_id=training.avatar_id,
        attempt=training.attempt,
        status=training.status,
        preset=training.preset,
        parameters=training.parameters,
        fal_input=training.fal_input,
        endpoint=training.endpoint,
        test_mode=training.test_mode,
        photo_count=training.photo_count,
        request_id=training.request_id,
        queue_position=training.queue_position,
        progress=TrainingProgress(steps_done=done, steps_total=total, percent=percent),
        logs=training.logs,
        error_code=training.error_code,
        error_message=training.error_message,
        result=result,
        queued_at=training.created_at,
        submitted_at=training.submitted_at,
        started_at=training.started_at,
        completed_at=training.completed_at,
        updated_at=training.updated_at,
    )


async def start_training(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    data: TrainingStart,
) -> Training:
    """Record a queued training and its submit job in one transaction."""
    settings = services.settings
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id, for_update=True)
    if avatar.status not in STARTABLE:
        raise TrainingNotAllowed(
            f"The avatar is '{avatar.status}'; a training can start from draft, failed or "
            "cancelled."
        )
    low, high = photo_bounds(avatar.training_type, settings)
    count = await count_for_avatar(session, avatar_id=avatar.id)
    if count < low:
        raise NotEnoughPhotos(f"The avatar has {count} photos; training needs at least {low}.")
    if count > high:
        raise TooManyPhotos(f"The avatar has {count} photos; training takes at most {high}.")
    await check_training_quotas(session, settings=settings, tenant_id=avatar.tenant_id)
    strategy = get_strategy(avatar.training_type, settings)
    parameters = strategy.resolve_parameters(data.preset, data.overrides)
    training = Training(
        tenant_id=avatar.tenant_id,
        avatar_id=avatar.id,
        attempt=await repository.next_attempt(session, avatar_id=avatar.id),
        preset=data.preset.value if data.preset else None,
        overrides=data.overrides,
        parameters=parameters,
        endpoint=strategy.endpoint,
        test_mode=settings.effective_test_mode,
        photo_count=count,
    )
    session.add(training)
    charge_training_start(session, tenant_id=avatar.tenant_id, now=training.created_at)
    set_avatar_status(avatar, AvatarStatus.queued)
    session.add(avatar)
    await session.flush()
    await enqueue(
        session,
        kind=SUBMIT_JOB,
        payload={"training_id": str(training.id)},
        dedupe_key=f"submit:{training.id}",
    )
    await notify(session, training, avatar)
    return training


async def _avatar_and_latest(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID
) -> tuple[Avatar, Training]:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    training = await repository.latest_for_avatar(session, avatar_id=avatar.id)
    if training is None:
        raise TrainingNotFound("The avatar has not been trained yet.")
    return avatar, training


async def current_training(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID
) -> Training:
    return (await _avatar_and_latest(session, principal=principal, avatar_id=avatar_id))[1]


async def list_trainings(
    session: AsyncSession,
    *,
    principal: Principal,
    avatar_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> TrainingPage:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    rows = await repository.list_page(
        session, avatar_id=avatar.id, limit=limit, after=Cursor.decode(cursor) if cursor else None
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = Cursor(created_at=page[-1].created_at, id=page[-1].id).encode() if more else None
    return TrainingPage(items=[to_read(t) for t in page], next_cursor=next_cursor)


async def cancel_training(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID
) -> Training:
    """Cancel here at once; the cancellation at fal runs as a job (it may need retries)."""
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id, for_update=True)
    training = await repository.latest_for_avatar(session, avatar_id=avatar.id)
    if training is None or training.status not in ACTIVE:
        raise TrainingNotCancellable("There is no queued or running training to cancel.")
    await session.refresh(training, with_for_update={"key_share": True})
    await set_training_status(session, training, avatar, TrainingStatus.cancelled)
    training.error_code = "cancelled"
    training.error_message = "Cancelled by the caller."
    session.add(training)
    if training.request_id is not None:
        await enqueue(
            session,
            kind=CANCEL_REMOTE_JOB,
            payload={"training_id": str(training.id)},
            dedupe_key=f"cancel:{training.id}",
        )
    await notify(session, training, avatar)
    return training
