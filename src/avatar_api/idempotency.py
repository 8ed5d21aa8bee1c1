"""Idempotency-Key support: same key and body replay the first response.

The key is claimed in its own short transaction before the work starts, so a concurrent
duplicate sees the claim and gets a 409 instead of running the work twice. The response is
recorded in the request's own transaction, so it commits together with the effects. A
failed request releases its claim so the client can retry with the same key.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.errors import Conflict, UnprocessableEntity
from avatar_api.models import IdempotencyKey

MAX_KEY_LENGTH = 255
# A claim still unfinished after this long belongs to a request that died between its
# claim and its commit; it no longer blocks the key.
STALE_CLAIM = timedelta(minutes=5)


class IdempotencyKeyReused(UnprocessableEntity):
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different request"


class IdempotentRequestInProgress(Conflict):
    code = "idempotent_request_in_progress"
    title = "A request with this Idempotency-Key is still in progress"


def request_fingerprint(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Claim:
    """A claimed key; ``replay`` is set when the key already has a recorded response."""

    id: uuid.UUID | None
    replay: tuple[int, dict[str, Any]] | None = None


async def claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    tenant_id: uuid.UUID,
    scope: str,
    key: str,
    fingerprint: str,
) -> Claim:
    try:
        async with session_scope(sessionmaker) as session:
            row = IdempotencyKey(
                tenant_id=tenant_id, scope=scope, key=key, request_hash=fingerprint
            )
            session.add(row)
            await session.flush()
            return Claim(id=row.id)
    except IntegrityError:
        pass
    async with session_scope(sessionmaker) as session:
        existing = (
            await session.exec(
                select(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id,
                    IdempotencyKey.scope == scope,
                    IdempotencyKey.key == key,
                )
            )
        ).first()
    if existing is None:  # released between our insert and this read: the client may retry
        raise IdempotentRequestInProgress("Retry the request.")
    if existing.request_hash != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request body; use a new key."
        )
    if not existing.completed and utcnow() - existing.created_at > STALE_CLAIM:
        await release(sessionmaker, claim_id=existing.id)
        return await claim(
            sessionmaker, tenant_id=tenant_id, scope=scope, key=key, fingerprint=fingerprint
        )
    if not existing.completed or existing.response_status is None:
        raise IdempotentRequestInProgress("The first request with this key has not finished yet.")
    return Claim(id=None, replay=(existing.response_status, existing.response_body or {}))


async def record(
    session: AsyncSession, *, claim_id: uuid.UUID, status: int, body: dict[str, Any]
) -> None:
    """Store the response in the caller's transaction (it commits with the effects)."""
    row = await session.get(IdempotencyKey, claim_id)
    if row is not None:
        row.completed = True
        row.response_status = status
        row.response_body = body
        session.add(row)
        await session.flush()


async def release(sessionmaker: async_sessionmaker[AsyncSession], *, claim_id: uuid.UUID) -> None:
    async with session_scope(sessionmaker) as session:
        row = await session.get(IdempotencyKey, claim_id)
        if row is not None:
            await session.delete(row)
