from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from avatar_api.avatars.errors import AvatarNotFound
from avatar_api.dependencies import PrincipalDep, ReadSessionDep, ServicesDep, SessionDep
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.idempotency import IdempotencyKeyReused, IdempotentRequestInProgress
from avatar_api.pagination import CursorQuery, InvalidCursor, LimitQuery
from avatar_api.quotas import ConcurrentTrainingsQuotaExceeded, DailyTrainingsQuotaExceeded
from avatar_api.trainers.base import InvalidTrainingOverrides
from avatar_api.training import service
from avatar_api.training.errors import (
    NotEnoughPhotos,
    TooManyPhotos,
    TrainingNotAllowed,
    TrainingNotCancellable,
    TrainingNotFound,
)
from avatar_api.training.idempotent import start_training_idempotently
from avatar_api.training.results import LoraNotAvailable, LoraNotReady, lora_download
from avatar_api.training.schemas import LoraDownload, TrainingPage, TrainingRead, TrainingStart

router = APIRouter(prefix="/v1/avatars/{avatar_id}", tags=["training"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retry-safe key: the same key and body give the same response.",
    ),
]


@router.post(
    "/training",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="start_training",
    responses=problem_responses(
        Unauthorized,
        AvatarNotFound,
        TrainingNotAllowed,
        IdempotentRequestInProgress,
        NotEnoughPhotos,
        TooManyPhotos,
        InvalidTrainingOverrides,
        IdempotencyKeyReused,
        ConcurrentTrainingsQuotaExceeded,
        DailyTrainingsQuotaExceeded,
    ),
)
async def start_training(
    avatar_id: uuid.UUID,
    data: TrainingStart,
    principal: PrincipalDep,
    session: SessionDep,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> TrainingRead:
    """Start training the avatar on its photos; follow it with GET .../training."""
    result, replayed = await start_training_idempotently(
        session,
        services=services,
        principal=principal,
        avatar_id=avatar_id,
        data=data,
        idempotency_key=idempotency_key,
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result


@router.get(
    "/training",
    operation_id="get_current_training",
    responses=problem_responses(Unauthorized, AvatarNotFound, TrainingNotFound),
)
async def get_current_training(
    avatar_id: uuid.UUID, principal: PrincipalDep, session: ReadSessionDep
) -> TrainingRead:
    """Get the avatar's latest training: status, queue position, progress, logs, result."""
    return service.to_read(
        await service.current_training(session, principal=principal, avatar_id=avatar_id)
    )


@router.get(
    "/trainings",
    operation_id="list_trainings",
    responses=problem_responses(Unauthorized, AvatarNotFound, InvalidCursor),
)
async def list_trainings(
    avatar_id: uuid.UUID,
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> TrainingPage:
    """List the avatar's training attempts, newest first."""
    return await service.list_trainings(
        session, principal=principal, avatar_id=avatar_id, limit=limit, cursor=cursor
    )


@router.post(
    "/training/cancel",
    operation_id="cancel_training",
    responses=problem_responses(Unauthorized, AvatarNotFound, TrainingNotCancellable),
)
async def cancel_training(
    avatar_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> TrainingRead:
    """Cancel the avatar's queued or running training (at fal too)."""
    return service.to_read(
        await service.cancel_training(session, principal=principal, avatar_id=avatar_id)
    )


@router.get(
    "/lora",
    operation_id="get_avatar_lora",
    responses=problem_responses(Unauthorized, AvatarNotFound, LoraNotAvailable, LoraNotReady),
)
async def get_avatar_lora(
    avatar_id: uuid.UUID, principal: PrincipalDep, session: ReadSessionDep, services: ServicesDep
) -> LoraDownload:
    """Get a short-lived download URL of the avatar's trained LoRA file (our copy)."""
    return await lora_download(session, services=services, principal=principal, avatar_id=avatar_id)
