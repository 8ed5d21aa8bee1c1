"""Starting a training behind an Idempotency-Key."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api import idempotency
from avatar_api.auth.service import Principal
from avatar_api.services import Services
from avatar_api.training import service
from avatar_api.training.schemas import TrainingRead, TrainingStart


def fingerprint_for(avatar_id: uuid.UUID | str, data: TrainingStart) -> str:
    return idempotency.request_fingerprint(
        {"avatar_id": str(avatar_id), **data.model_dump(mode="json")}
    )


async def start_training_idempotently(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    data: TrainingStart,
    idempotency_key: str | None,
) -> tuple[TrainingRead, bool]:
    """The training started now, or the recorded response of the first identical request."""
    if idempotency_key is None:
        training = await service.start_training(
            session, services=services, principal=principal, avatar_id=avatar_id, data=data
        )
        return service.to_read(training), False
    fingerprint = fingerprint_for(avatar_id, data)
    claim = await idempotency.claim(
        services.sessionmaker,
        tenant_id=principal.tenant_id,
        scope="start_training",
        key=idempotency_key,
        fingerprint=fingerprint,
    )
    if claim.replay is not None:
        return TrainingRead.model_validate(claim.replay[1]), True
    assert claim.id is not None
    try:
        training = await service.start_training(
            session, services=services, principal=principal, avatar_id=avatar_id, data=data
        )
        result = service.to_read(training)
        await idempotency.record(
            session, claim_id=claim.id, status=202, body=result.model_dump(mode="json")
        )
        # Committed here rather than by the request's session dependency: if the commit
        # itself fails, the claim must be released too, or the key would answer 409.
        await session.commit()
    except BaseException:
        # Roll back first: on SQLite this session holds the write lock the release needs.
        await session.rollback()
        await idempotency.release(services.sessionmaker, claim_id=claim.id)
        raise
    return result, False
