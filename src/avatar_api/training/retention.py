"""Retention: training photos and archives are deleted N days after the training ended.

The trained result (LoRA copy, finetune id) is kept; the caller's photos are not needed
once a training is over, and keeping them longer than necessary is a liability.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import exists, or_
from sqlmodel import col, select

from avatar_api.db import session_scope
from avatar_api.models import Avatar, AvatarStatus, Photo, Training
from avatar_api.services import Services
from avatar_api.training.state import TERMINAL

logger = logging.getLogger("avatar_api.training")
BATCH = 50


async def apply_retention(services: Services) -> int:
    """Erase photos and archives of avatars whose training ended long enough ago."""
    days = services.settings.retention_photo_days
    if days <= 0:
        return 0
    cutoff = services.clock() - timedelta(days=days)
    has_photos = exists(select(Photo.id).where(Photo.avatar_id == Training.avatar_id))
    async with session_scope(services.sessionmaker) as session:
        avatar_ids = (
            await session.exec(
                select(Training.avatar_id)
                .where(
                    col(Training.status).in_(list(TERMINAL)),
                    col(Training.completed_at) < cutoff,
                    or_(col(Training.archive_key).is_not(None), has_photos),
                )
                .distinct()
                .limit(BATCH)
            )
        ).all()
    erased = 0
    # One short transaction per avatar: storage calls happen under its row lock only.
    for avatar_id in avatar_ids:
        async with session_scope(services.sessionmaker) as session:
            avatar = await session.get(Avatar, avatar_id, with_for_update=True)
            if avatar is None or avatar.status in (AvatarStatus.queued, AvatarStatus.training):
                continue  # erased, or retrained meanwhile: its photos are in use again
            photos = (await session.exec(select(Photo).where(Photo.avatar_id == avatar_id))).all()
            trainings = (
                await session.exec(
                    select(Training).where(
                        Training.avatar_id == avatar_id, col(Training.archive_key).is_not(None)
                    )
                )
            ).all()
            for photo in photos:
                await services.storage.delete(photo.storage_key)
                await session.delete(photo)
            for training in trainings:
                assert training.archive_key is not None
                await services.storage.delete(training.archive_key)
                training.archive_key = None
                session.add(training)
        erased += 1
        logger.info(
            "avatar.photos_expired",
            extra={"avatar_id": str(avatar_id), "photos": len(photos), "days": days},
        )
    return erased
