from __future__ import annotations

import uuid

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Photo


async def list_for_avatar(
    session: AsyncSession, *, tenant_id: uuid.UUID, avatar_id: uuid.UUID
) -> list[Photo]:
    stmt = (
        select(Photo)
        .where(Photo.tenant_id == tenant_id, Photo.avatar_id == avatar_id)
        .order_by(col(Photo.created_at), col(Photo.id))
    )
    return list((await session.exec(stmt)).all())


async def count_for_avatar(session: AsyncSession, *, avatar_id: uuid.UUID) -> int:
    stmt = select(func.count()).select_from(Photo).where(Photo.avatar_id == avatar_id)
    return int((await session.exec(stmt)).one())


async def get(
    session: AsyncSession, *, tenant_id: uuid.UUID, avatar_id: uuid.UUID, photo_id: uuid.UUID
) -> Photo | None:
    stmt = select(Photo).where(
        Photo.tenant_id == tenant_id, Photo.avatar_id == avatar_id, Photo.id == photo_id
    )
    return (await session.exec(stmt)).first()
