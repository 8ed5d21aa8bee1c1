from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Avatar, Training, TrainingStatus
from avatar_api.pagination import Cursor


async def latest_for_avatar(session: AsyncSession, *, avatar_id: uuid.UUID) -> Training | None:
    stmt = (
        select(Training)
        .where(Training.avatar_id == avatar_id)
        .order_by(col(Training.attempt).desc())
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def next_attempt(session: AsyncSession, *, avatar_id: uuid.UUID) -> int:
    stmt = select(func.max(Training.attempt)).where(Training.avatar_id == avatar_id)
    current = (await session.exec(stmt)).one()
    return int(current or 0) + 1


async def list_page(
    session: AsyncSession, *, avatar_id: uuid.UUID, limit: int, after: Cursor | None
) -> list[Training]:
    stmt = select(Training).where(Training.avatar_id == avatar_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                col(Training.created_at) < after.created_at,
                and_(col(Training.created_at) == after.created_at, col(Training.id) < after.id),
            )
        )
    stmt = stmt.order_by(col(Training.created_at).desc(), col(Training.id).desc()).limit(limit + 1)
    return list((await session.exec(stmt)).all())


async def lock_with_avatar(
    session: AsyncSession, *, training_id: uuid.UUID
) -> tuple[Training, Avatar] | None:
    """The training and its avatar, both locked, avatar first (the order every writer uses).

    The training is locked FOR NO KEY UPDATE (writers never change its id): a fal webhook
    delivery, which reads it FOR KEY SHARE, is not held up by it.
    """
    training = await session.get(Training, training_id)
    if training is None:
        return None
    avatar = (
        await session.exec(select(Avatar).where(Avatar.id == training.avatar_id).with_for_update())
    ).first()
    locked = (
        await session.exec(
            select(Training).where(Training.id == training_id).with_for_update(key_share=True)
        )
    ).first()
    if avatar is None or locked is None:
        return None
    await session.refresh(locked)
    return locked, avatar


async def due_for_poll(
    session: AsyncSession, *, checked_before: datetime, limit: int
) -> Sequence[Training]:
    stmt = (
        select(Training)
        .where(
            col(Training.status).in_([TrainingStatus.in_queue, TrainingStatus.in_progress]),
            or_(
                col(Training.last_checked_at).is_(None),
                col(Training.last_checked_at) < checked_before,
            ),
        )
        .order_by(col(Training.last_checked_at).asc())
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def stuck_submitting(
    session: AsyncSession, *, started_before: datetime, limit: int
) -> Sequence[Training]:
    stmt = (
        select(Training)
        .where(
            Training.status == TrainingStatus.submitting,
            col(Training.submit_started_at) < started_before,
        )
        # A fixed order, so reconcilers in several workers lock rows in the same sequence.
        .order_by(col(Training.id))
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def running_since(
    session: AsyncSession, *, submitted_before: datetime, limit: int
) -> Sequence[Training]:
    stmt = (
        select(Training)
        .where(
            col(Training.status).in_([TrainingStatus.in_queue, TrainingStatus.in_progress]),
            col(Training.submitted_at) < submitted_before,
        )
        .order_by(col(Training.id))
        .limit(limit)
    )
    return (await session.exec(stmt)).all()
