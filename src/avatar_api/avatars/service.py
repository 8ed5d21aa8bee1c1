"""Avatar use cases. Services flush; the request's session dependency commits."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars import repository
from avatar_api.avatars.errors import AvatarNotEditable, AvatarNotFound, MetadataTooLarge
from avatar_api.avatars.schemas import AvatarCreate, AvatarPage, AvatarRead, AvatarUpdate
from avatar_api.avatars.state import EDITABLE
from avatar_api.db import Reader, utcnow
from avatar_api.models import Avatar, AvatarStatus, TrainingType
from avatar_api.pagination import Cursor

_TRIGGER_STEMS = {TrainingType.portrait: "PERSON", TrainingType.style: "STYLE"}


def to_read(avatar: Avatar) -> AvatarRead:
    return AvatarRead(
        id=avatar.id,
        name=avatar.name,
        training_type=avatar.training_type,
        gender=avatar.gender,
        external_user_id=avatar.external_user_id,
        trigger_phrase=avatar.trigger_phrase,
        metadata=avatar.user_metadata,
        status=avatar.status,
        created_at=avatar.created_at,
        updated_at=avatar.updated_at,
    )


def generate_trigger_phrase(training_type: TrainingType) -> str:
    # A rare token that is unlikely to collide with a real word in prompts.
    return f"{_TRIGGER_STEMS[training_type]}_{secrets.token_hex(4)}"


def _check_metadata(metadata: dict[str, Any], *, max_bytes: int) -> None:
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise MetadataTooLarge(f"metadata is {size} bytes of JSON; the limit is {max_bytes}.")


async def get_avatar(
    session: AsyncSession,
    *,
    principal: Principal,
    avatar_id: uuid.UUID,
    for_update: bool = False,
) -> Avatar:
    """The caller's avatar; another tenant's id is indistinguishable from a missing one."""
    avatar = await repository.get(
        session, tenant_id=principal.tenant_id, avatar_id=avatar_id, for_update=for_update
    )
    if avatar is None:
        raise AvatarNotFound(f"No avatar with id {avatar_id}.")
    return avatar


async def read_avatar(reader: Reader, *, principal: Principal, avatar_id: uuid.UUID) -> AvatarRead:
    """What GET /v1/avatars/{id} answers: read as plain columns, no session, no ORM object."""
    async with reader.connect() as connection:
        row = await repository.read_row(
            connection, tenant_id=principal.tenant_id, avatar_id=avatar_id
        )
    if row is None:
        raise AvatarNotFound(f"No avatar with id {avatar_id}.")
    # The row's columns carry AvatarRead's field names (tenant_id and the like are ignored).
    return AvatarRead.model_validate(dict(row))


async def create_avatar(
    session: AsyncSession, *, principal: Principal, data: AvatarCreate, metadata_max_bytes: int
) -> Avatar:
    _check_metadata(data.metadata, max_bytes=metadata_max_bytes)
    avatar = Avatar(
        tenant_id=principal.tenant_id,
        name=data.name,
        training_type=data.training_type,
        gender=data.gender,
        external_user_id=data.external_user_id,
        trigger_phrase=data.trigger_phrase or generate_trigger_phrase(data.training_type),
        user_metadata=data.metadata,
    )
    session.add(avatar)
    await session.flush()
    return avatar


async def list_avatars(
    session: AsyncSession,
    *,
    principal: Principal,
    limit: int,
    cursor: str | None,
    external_user_id: str | None = None,
    status: AvatarStatus | None = None,
    training_type: TrainingType | None = None,
) -> AvatarPage:
    rows = await repository.list_page(
        session,
        tenant_id=principal.tenant_id,
        limit=limit,
        after=Cursor.decode(cursor) if cursor else None,
        external_user_id=external_user_id,
        status=status,
        training_type=training_type,
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = Cursor(created_at=page[-1].created_at, id=page[-1].id).encode() if more else None
    return AvatarPage(items=[to_read(a) for a in page], next_cursor=next_cursor)


async def update_avatar(
    session: AsyncSession,
    *,
    principal: Principal,
    avatar_id: uuid.UUID,
    data: AvatarUpdate,
    metadata_max_bytes: int,
) -> Avatar:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id, for_update=True)
    if avatar.status not in EDITABLE:
        raise AvatarNotEditable(
            f"The avatar is '{avatar.status}'; it can be changed again once its training ends."
        )
    changes = data.model_dump(exclude_unset=True)
    if changes.get("name") is not None:
        avatar.name = changes["name"]
    if changes.get("metadata") is not None:
        _check_metadata(changes["metadata"], max_bytes=metadata_max_bytes)
        avatar.user_metadata = changes["metadata"]
    avatar.updated_at = utcnow()
    session.add(avatar)
    await session.flush()
    return avatar
