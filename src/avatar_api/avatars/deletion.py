"""Erasing an avatar: here, in storage, and at the provider, with a receipt.

Everything a caller uploaded or we produced for an avatar lives under one storage prefix,
so storage is erased with one prefix delete. It runs before the rows' deletion commits: if
it fails, the request fails and the avatar is still there to delete again. fal is asked to
cancel what still runs and to delete its stored payloads through jobs, which retry and do
not depend on the rows that are gone.
"""

from __future__ import annotations

import logging
import uuid

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars import repository as avatar_repository
from avatar_api.avatars.errors import UserErasureIncomplete
from avatar_api.avatars.schemas import (
    AvatarDeletionReceipt,
    DeletedRecords,
    ProviderCleanup,
    UserDeletionReceipt,
)
from avatar_api.avatars.service import get_avatar
from avatar_api.db import session_scope, utcnow
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.models import Avatar, Generation, GenerationStatus, Photo, Training
from avatar_api.services import Services
from avatar_api.storage_keys import avatar_prefix
from avatar_api.training.state import ACTIVE
from avatar_api.webhooks.events import WebhookEventType, emit_event

logger = logging.getLogger("avatar_api.avatars")

GENERATION_ACTIVE = frozenset(
    {
        GenerationStatus.queued,
        GenerationStatus.submitting,
        GenerationStatus.in_queue,
        GenerationStatus.in_progress,
    }
)


async def _count(
    session: AsyncSession, model: type[Photo] | type[Training], avatar_id: uuid.UUID
) -> int:
    stmt = select(func.count()).select_from(model).where(col(model.avatar_id) == avatar_id)
    return int((await session.exec(stmt)).one())


async def erase_avatar(
    session: AsyncSession, *, services: Services, avatar: Avatar
) -> AvatarDeletionReceipt:
    """Delete one avatar (row already locked by the caller) and everything it owns."""
    trainings = list(
        (await session.exec(select(Training).where(Training.avatar_id == avatar.id))).all()
    )
    generations = list(
        (await session.exec(select(Generation).where(Generation.avatar_id == avatar.id))).all()
    )
    records = DeletedRecords(
        avatars=1,
        photos=await _count(session, Photo, avatar.id),
        trainings=len(trainings),
        generations=len(generations),
    )
    provider = []
    fal_requests = [(t.request_id, t.endpoint, t.status in ACTIVE) for t in trainings] + [
        (g.request_id, g.endpoint, g.status in GENERATION_ACTIVE) for g in generations
    ]
    for request_id, endpoint, cancel in fal_requests:
        if request_id is None:
            continue
        await enqueue_cleanup(session, endpoint=endpoint, request_id=request_id, cancel=cancel)
        provider.append(
            ProviderCleanup(
                request_id=request_id,
                endpoint=endpoint,
                cancel_requested=cancel,
                payload_deletion="queued",
            )
        )
    prefix = avatar_prefix(avatar.tenant_id, avatar.id)
    await session.delete(avatar)
    await session.flush()
    objects = await services.storage.delete_prefix(prefix)
    receipt = AvatarDeletionReceipt(
        avatar_id=avatar.id,
        external_user_id=avatar.external_user_id,
        deleted_at=utcnow(),
        database=records,
        storage_objects_deleted=objects,
        provider=provider,
    )
    await emit_event(
        session,
        tenant_id=avatar.tenant_id,
        event_type=WebhookEventType.avatar_deleted,
        data=receipt.model_dump(mode="json"),
    )
    logger.info(
        "avatar.deleted",
        extra={
            "tenant_id": str(avatar.tenant_id),
            "avatar_id": str(avatar.id),
            "storage_objects": objects,
            "provider_requests": len(provider),
        },
    )
    return receipt


async def delete_avatar(
    session: AsyncSession, *, services: Services, principal: Principal, avatar_id: uuid.UUID
) -> AvatarDeletionReceipt:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id, for_update=True)
    return await erase_avatar(session, services=services, avatar=avatar)


async def delete_user(
    *, services: Services, principal: Principal, external_user_id: str
) -> UserDeletionReceipt:
    """Erase every avatar of one of the caller's users (only within the caller's tenant).

    One transaction per avatar, so a user with many avatars never holds the database's
    locks for the whole erasure. Should one avatar fail, the ones before it are gone and
    the request fails: asking again erases the rest (an avatar already gone is skipped).
    """
    async with session_scope(services.sessionmaker) as session:
        avatar_ids = (
            await session.exec(
                select(Avatar.id)
                .where(
                    Avatar.tenant_id == principal.tenant_id,
                    Avatar.external_user_id == external_user_id,
                )
                .order_by(col(Avatar.created_at))
            )
        ).all()
    receipts: list[AvatarDeletionReceipt] = []
    for avatar_id in avatar_ids:
        try:
            async with session_scope(services.sessionmaker) as session:
                avatar = await avatar_repository.get(
                    session, tenant_id=principal.tenant_id, avatar_id=avatar_id, for_update=True
                )
                if avatar is not None:  # erased meanwhile by another request
                    receipts.append(await erase_avatar(session, services=services, avatar=avatar))
        except Exception as exc:
            if not receipts:
                raise  # nothing changed: the error as it is
            logger.exception(
                "user.erasure_incomplete",
                extra={"tenant_id": str(principal.tenant_id), "erased": len(receipts)},
            )
            # The receipts of what is gone already, which asking again will not repeat.
            raise UserErasureIncomplete(
                f"{len(receipts)} of the user's {len(avatar_ids)} avatars were erased before "
                "an error; send the request again to erase the rest.",
                erased=[receipt.model_dump(mode="json") for receipt in receipts],
            ) from exc
    return UserDeletionReceipt(external_user_id=external_user_id, avatars=receipts)
