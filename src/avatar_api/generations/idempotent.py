"""Creating a generation behind an Idempotency-Key."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api import idempotency
from avatar_api.auth.service import Principal
from avatar_api.generations import service
from avatar_api.generations.schemas import GenerationCreate, GenerationRead
from avatar_api.services import Services

SCOPE = "create_generation"


async def create_generation_idempotently(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    data: GenerationCreate,
    idempotency_key: str | None,
) -> tuple[GenerationRead, bool]:
    """The generation created now, or the recorded response of the first identical request."""
    if idempotency_key is None:
        generation = await service.create_generation(
            session, services=services, principal=principal, avatar_id=avatar_id, data=data
        )
        return await service.to_read(generation, services), False
    fingerprint = idempotency.request_fingerprint(
        {"avatar_id": str(avatar_id), **data.model_dump(mode="json")}
    )
    claim = await idempotency.claim(
        services.sessionmaker,
        tenant_id=principal.tenant_id,
        scope=SCOPE,
        key=idempotency_key,
        fingerprint=fingerprint,
    )
    if claim.replay is not None:
        return GenerationRead.model_validate(claim.replay[1]), True
    assert claim.id is not None
    try:
        generation = await service.create_generation(
            session, services=services, principal=principal, avatar_id=avatar_id, data=data
        )
        result = await service.to_read(generation, services)
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
