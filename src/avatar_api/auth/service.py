"""Tenants and API keys: keys are shown once, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.errors import NotFound, Unauthorized
from avatar_api.models import ApiKey, Tenant

KEY_PREFIX = "avk_"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "API key not found"


@dataclass(frozen=True)
class Principal:
    """Who is calling: every tenant-owned query filters on ``tenant_id``."""

    tenant_id: uuid.UUID
    api_key_id: uuid.UUID


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    tenant: Tenant
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def get_or_create_tenant(session: AsyncSession, *, name: str) -> Tenant:
    tenant = (await session.exec(select(Tenant).where(Tenant.name == name))).first()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        await session.flush()
    return tenant


async def create_api_key(session: AsyncSession, *, tenant_name: str, name: str = "") -> IssuedKey:
    tenant = await get_or_create_tenant(session, name=tenant_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(tenant_id=tenant.id, name=name, prefix=secret[:12], key_hash=hash_key(secret))
    session.add(api_key)
    await session.flush()
    return IssuedKey(api_key=api_key, tenant=tenant, secret=secret)


async def list_api_keys(session: AsyncSession) -> list[tuple[ApiKey, Tenant]]:
    rows = await session.exec(
        select(ApiKey, Tenant)
        .join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
        .order_by(col(ApiKey.created_at))
    )
    return list(rows.all())


async def revoke_api_key(session: AsyncSession, *, api_key_id: uuid.UUID) -> ApiKey:
    api_key = await session.get(ApiKey, api_key_id)
    if api_key is None:
        raise ApiKeyNotFound(f"No API key with id {api_key_id}.")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.add(api_key)
        await session.flush()
    return api_key


class PrincipalCache:
    """Keys this process authenticated recently, so a busy client costs no lookup per request.

    Entries are keyed by the key's SHA-256 (the secret itself is never kept) and live for
    ``ttl_seconds``: a revoked key stops working in every process within that time. Only
    successful lookups are kept; the size is bounded, the oldest entry going first.
    Concurrent requests that miss on the same key share one lookup (:meth:`get_or_load`):
    when a busy key's entry expires, its requests in flight make one query, not one each.
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._loading: dict[str, asyncio.Task[Principal]] = {}

    async def get_or_load(
        self, digest: str, load: Callable[[], Coroutine[Any, Any, Principal]]
    ) -> Principal:
        """The cached principal, else ``load()``'s, shared with concurrent misses."""
        principal = self.get(digest)
        if principal is not None:
            return principal
        loading = self._loading.get(digest)
        if loading is None:
            # In a context of its own: it answers every request waiting on this key.
            loading = self._loading[digest] = asyncio.get_running_loop().create_task(
                load(), context=contextvars.Context()
            )

            def finished(done: asyncio.Task[Principal]) -> None:
                del self._loading[digest]
                if not done.cancelled() and done.exception() is None:
                    self.put(digest, done.result())

            loading.add_done_callback(finished)
        # Shielded: a caller that goes away does not cancel the lookup for the others.
        return await asyncio.shield(loading)

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, principal = entry
        if self._clock() >= expires:
            del self._entries[digest]
            return None
        return principal

    def put(self, digest: str, principal: Principal) -> None:
        if self.ttl_seconds <= 0:
            return
        self._entries.pop(digest, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (self._clock() + self.ttl_seconds, principal)


def require_secret(secret: str | None) -> str:
    if not secret:
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    return secret


async def authenticate(session: AsyncSession, *, secret: str | None) -> Principal:
    return await authenticate_digest(session, hash_key(require_secret(secret)))


async def authenticate_digest(session: AsyncSession, digest: str) -> Principal:
    """The principal of the key whose SHA-256 is ``digest``; 401 if unknown or revoked."""
    api_key = (await session.exec(select(ApiKey).where(ApiKey.key_hash == digest))).first()
    # The index lookup already matched; compare_digest keeps the final check constant-time.
    if (
        api_key is None
        or not hmac.compare_digest(api_key.key_hash, digest)
        or api_key.revoked_at is not None
    ):
        raise Unauthorized("The API key is invalid or has been revoked.")
    return Principal(tenant_id=api_key.tenant_id, api_key_id=api_key.id)
