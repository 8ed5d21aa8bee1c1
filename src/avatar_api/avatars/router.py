from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from avatar_api.avatars import deletion, service
from avatar_api.avatars.errors import (
    AvatarNotEditable,
    AvatarNotFound,
    MetadataTooLarge,
    UserErasureIncomplete,
)
from avatar_api.avatars.schemas import (
    AvatarCreate,
    AvatarDeletionReceipt,
    AvatarPage,
    AvatarRead,
    AvatarUpdate,
    UserDeletionReceipt,
)
from avatar_api.dependencies import (
    PrincipalDep,
    ReaderDep,
    ReadSessionDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.models import AvatarStatus, TrainingType
from avatar_api.pagination import CursorQuery, InvalidCursor, LimitQuery

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])
users_router = APIRouter(prefix="/v1/users", tags=["avatars"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    operation_id="create_avatar",
    responses=problem_responses(Unauthorized, MetadataTooLarge),
)
async def create_avatar(
    data: AvatarCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> AvatarRead:
    """Create an avatar in status `draft`."""
    avatar = await service.create_avatar(
        session,
        principal=principal,
        data=data,
        metadata_max_bytes=settings.avatar_metadata_max_bytes,
    )
    return service.to_read(avatar)


@router.get(
    "", operation_id="list_avatars", responses=problem_responses(Unauthorized, InvalidCursor)
)
async def list_avatars(
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    external_user_id: Annotated[str | None, Query(max_length=128)] = None,
    status: AvatarStatus | None = None,
    training_type: TrainingType | None = None,
) -> AvatarPage:
    """List your avatars, newest first, with cursor pagination and filters."""
    return await service.list_avatars(
        session,
        principal=principal,
        limit=limit,
        cursor=cursor,
        external_user_id=external_user_id,
        status=status,
        training_type=training_type,
    )


@router.get(
    "/{avatar_id}",
    operation_id="get_avatar",
    responses=problem_responses(Unauthorized, AvatarNotFound),
)
async def get_avatar(
    avatar_id: uuid.UUID, principal: PrincipalDep, reader: ReaderDep
) -> AvatarRead:
    """Get one avatar."""
    return await service.read_avatar(reader, principal=principal, avatar_id=avatar_id)


@router.patch(
    "/{avatar_id}",
    operation_id="update_avatar",
    responses=problem_responses(Unauthorized, AvatarNotFound, AvatarNotEditable, MetadataTooLarge),
)
async def update_avatar(
    avatar_id: uuid.UUID,
    data: AvatarUpdate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> AvatarRead:
    """Rename an avatar or replace its metadata (not while it is queued or training)."""
    avatar = await service.update_avatar(
        session,
        principal=principal,
        avatar_id=avatar_id,
        data=data,
        metadata_max_bytes=settings.avatar_metadata_max_bytes,
    )
    return service.to_read(avatar)


@router.delete(
    "/{avatar_id}",
    operation_id="delete_avatar",
    responses=problem_responses(Unauthorized, AvatarNotFound),
)
async def delete_avatar(
    avatar_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, services: ServicesDep
) -> AvatarDeletionReceipt:
    """Delete an avatar and everything of it, here, in storage and at fal; returns a receipt."""
    return await deletion.delete_avatar(
        session, services=services, principal=principal, avatar_id=avatar_id
    )


@users_router.delete(
    "/{external_user_id}",
    operation_id="delete_user",
    responses=problem_responses(Unauthorized, UserErasureIncomplete),
)
async def delete_user(
    external_user_id: Annotated[str, Path(min_length=1, max_length=128)],
    principal: PrincipalDep,
    services: ServicesDep,
) -> UserDeletionReceipt:
    """Erase every avatar of one of your users (by your external_user_id); returns receipts.

    Avatars are erased one at a time. If one fails after others were erased, the answer is a
    503 `user_erasure_incomplete` problem whose `erased` member holds the receipts of those;
    send the request again to erase the rest.
    """
    return await deletion.delete_user(
        services=services, principal=principal, external_user_id=external_user_id
    )
