from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status

from avatar_api.avatars.errors import AvatarNotFound
from avatar_api.dependencies import (
    PrincipalDep,
    ReadSessionDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.generations import service
from avatar_api.generations.errors import (
    AvatarNotTrained,
    GenerationNotCancellable,
    GenerationNotFound,
    InvalidGenerationInput,
)
from avatar_api.generations.fal_webhooks import receive_generation_webhook
from avatar_api.generations.idempotent import create_generation_idempotently
from avatar_api.generations.schemas import GenerationCreate, GenerationPage, GenerationRead
from avatar_api.generations.tokens import WEBHOOK_PATH
from avatar_api.idempotency import IdempotencyKeyReused, IdempotentRequestInProgress
from avatar_api.pagination import CursorQuery, InvalidCursor, LimitQuery
from avatar_api.webhooks.fal_router import WebhookAck
from avatar_api.webhooks.fal_service import (
    FalWebhookRejected,
    FalWebhookTooLarge,
    JwksUnreachable,
    read_capped,
)

router = APIRouter(tags=["generations"])
# fal's callbacks; included before the training receiver, whose path is less specific.
webhook_router = APIRouter(tags=["fal webhooks"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retry-safe key: the same key and body give the same response.",
    ),
]


@router.post(
    "/v1/avatars/{avatar_id}/generations",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="create_generation",
    responses=problem_responses(
        Unauthorized,
        AvatarNotFound,
        AvatarNotTrained,
        IdempotentRequestInProgress,
        InvalidGenerationInput,
        IdempotencyKeyReused,
    ),
)
async def create_generation(
    avatar_id: uuid.UUID,
    data: GenerationCreate,
    principal: PrincipalDep,
    session: SessionDep,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> GenerationRead:
    """Generate images with a trained avatar; follow it with GET /v1/generations/{id}."""
    result, replayed = await create_generation_idempotently(
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
    "/v1/generations/{generation_id}",
    operation_id="get_generation",
    responses=problem_responses(Unauthorized, GenerationNotFound),
)
async def get_generation(
    generation_id: uuid.UUID,
    principal: PrincipalDep,
    session: ReadSessionDep,
    services: ServicesDep,
) -> GenerationRead:
    """Get one generation: status, and once completed its images (short-lived URLs)."""
    generation = await service.get_generation(
        session, principal=principal, generation_id=generation_id
    )
    return await service.to_read(generation, services)


@router.post(
    "/v1/generations/{generation_id}/cancel",
    operation_id="cancel_generation",
    responses=problem_responses(Unauthorized, GenerationNotFound, GenerationNotCancellable),
)
async def cancel_generation(
    generation_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    services: ServicesDep,
) -> GenerationRead:
    """Cancel a queued or running generation (at fal too, where its payloads are deleted)."""
    generation = await service.cancel_generation(
        session, principal=principal, generation_id=generation_id
    )
    return await service.to_read(generation, services)


@router.get(
    "/v1/avatars/{avatar_id}/generations",
    operation_id="list_generations",
    responses=problem_responses(Unauthorized, AvatarNotFound, InvalidCursor),
)
async def list_generations(
    avatar_id: uuid.UUID,
    principal: PrincipalDep,
    session: ReadSessionDep,
    services: ServicesDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> GenerationPage:
    """List the avatar's generations, newest first."""
    return await service.list_generations(
        session,
        services=services,
        principal=principal,
        avatar_id=avatar_id,
        limit=limit,
        cursor=cursor,
    )


@webhook_router.post(
    WEBHOOK_PATH + "/{generation_id}/{token}",
    operation_id="receive_fal_generation_webhook",
    responses=problem_responses(FalWebhookRejected, FalWebhookTooLarge, JwksUnreachable),
)
async def receive_fal_generation_webhook(
    generation_id: uuid.UUID,
    token: Annotated[str, Path(max_length=128)],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> WebhookAck:
    """Receive fal's signed webhook for a generation (called by fal, not by API clients)."""
    body = await read_capped(request.stream())
    stored = await receive_generation_webhook(
        session,
        settings=settings,
        verifier=request.app.state.fal_verifier,
        generation_id=generation_id,
        token=token,
        headers=request.headers,
        body=body,
    )
    return WebhookAck(status="accepted" if stored else "duplicate")
