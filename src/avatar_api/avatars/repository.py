"""Avatar queries; every one is scoped to a tenant."""

from __future__ import annotations

import uuid

from sqlalchemy import RowMapping, and_, bindparam, or_
from sqlalchemy import select as select_core
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Avatar, AvatarStatus, TrainingType
from avatar_api.pagination import Cursor

# The hottest query of the API, built once: SQLAlchemy keeps the statement's cache key, so
# a request neither rebuilds the expression nor recomputes the key.
_GET = select(Avatar).where(
    col(Avatar.tenant_id) == bindparam("tenant_id"), col(Avatar.id) == bindparam("avatar_id")
)
_GET_FOR_UPDATE = _GET.with_for_update()


async def get(
    session: AsyncSession, *, tenant_id: uuid.UUID, avatar_id: uuid.UUID, for_update: bool = False
) -> Avatar | None:
    stmt = _GET_FOR_UPDATE if for_update else _GET
    result = await session.exec(stmt, params={"tenant_id": tenant_id, "avatar_id": avatar_id})
    return result.first()


async def list_page(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    limit: int,
    after: Cursor | None,
    external_user_id: str | None,
    status: AvatarStatus | None,
    training_type: TrainingType | None,
) -> list[Avatar]:
    """Up to ``limit + 1`` avatars, newest first, so the caller can tell if more exist."""
    stmt = select(Avatar).where(Avatar.tenant_id == tenant_id)
    if external_user_id is not None:
        stmt = stmt.where(Avatar.external_user_id == external_user_id)
    if status is not None:
        stmt = stmt.where(Avatar.status == status)
    if training_type is not None:
        stmt = stmt.where(Avatar.training_type == training_type)
    if after is not None:
        stmt = stmt.where(
            or_(
                col(Avatar.created_at) < after.created_at,
                and_(col(Avatar.created_at) == after.created_at, col(Avatar.id) < after.id),
            )
        )
    stmt = stmt.order_by(col(Avatar.created_at).desc(), col(Avatar.id).desc()).limit(limit + 1)
    return list((await session.exec(stmt)).all())


_AVATARS = Avatar.__table__  # type: ignore[attr-defined]
# The same lookup as _GET for readers that need no ORM object: about 0.1 ms of CPU less.
_READ = select_core(_AVATARS).where(
    _AVATARS.c.tenant_id == bindparam("tenant_id"), _AVATARS.c.id == bindparam("avatar_id")
)


async def read_row(
    connection: AsyncConnection, *, tenant_id: uuid.UUID, avatar_id: uuid.UUID
) -> RowMapping | None:
    """The avatar's columns, without an ORM object (the hot read path)."""
    result = await connection.execute(_READ, {"tenant_id": tenant_id, "avatar_id": avatar_id})
    return result.mappings().first()
