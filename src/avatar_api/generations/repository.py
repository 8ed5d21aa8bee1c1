"""Generation queries. Reads for callers are scoped to a tenant; jobs read by id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Generation, GenerationStatus, Training, TrainingStatus
from avatar_api.pagination import Cursor


async def get(
    session: AsyncSession, *, tenant_id: uuid.UUID, generation_id: uuid.UUID
) -> Generation | None:
    stmt = select(Generation).where(
        Generation.tenant_id == tenant_id, Generation.id == generation_id
    )
    return (await session.exec(stmt)).first()


async def lock(session: AsyncSession, *, generation_id: uuid.UUID) -> Generation | None:
    """The generation, locked and freshly read (the only way writers load it)."""
    stmt = select(Generation).where(Generation.id == generation_id).with_for_update(key_share=True)
    generation = (await session.exec(stmt)).first()
    if generation is not None:
        await session.refresh(generation)
    return generation


async def latest_completed_training(
    session: AsyncSession, *, avatar_id: uuid.UUID
) -> Training | None:
    stmt = (
        select(Training)
        .where(Training.avatar_id == avatar_id, Training.status == TrainingStatus.completed)
        .order_by(col(Training.attempt).desc())
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def list_page(
    session: AsyncSession, *, avatar_id: uuid.UUID, limit: int, after: Cursor | None
) -> list[Generation]:
    """Up to ``limit + 1`` generations, newest first, so the caller can tell if more exist."""
    stmt = select(Generation).where(Generation.avatar_id == avatar_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                col(Generation.created_at) < after.created_at,
                and_(col(Generation.created_at) == after.created_at, col(Generation.id) < after.id),
            )
        )
    stmt = stmt.order_by(col(Generation.created_at).desc(), col(Generation.id).desc()).limit(
        limit + 1
    )
    return list((await session.exec(stmt)).all())


async def due_for_poll(
    session: AsyncSession, *, checked_before: datetime, limit: int
) -> Sequence[Generation]:
    stmt = (
        select(Generation)
        .where(
            col(Generation.status).in_([GenerationStatus.in_queue, GenerationStatus.in_progress]),
            or_(
                col(Generation.last_checked_at).is_(None),
                col(Generation.last_checked_at) < checked_before,
            ),
        )
        .order_by(col(Generation.last_checked_at).asc())
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def stuck_submitting(
    session: AsyncSession, *, started_before: datetime, limit: int
) -> Sequence[Generation]:
    stmt = (
        select(Generation)
        .where(
            Generation.status == GenerationStatus.submitting,
            col(Generation.submit_started_at) < started_before,
        )
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def running_since(
    session: AsyncSession, *, submitted_before: datetime, limit: int
) -> Sequence[Generation]:
    stmt = (
        select(Generation)
        .where(
            col(Generation.status).in_([GenerationStatus.in_queue, GenerationStatus.in_progress]),
            col(Generation.submitted_at) < submitted_before,
        )
        .limit(limit)
    )
    return (await session.exec(stmt)).all()
