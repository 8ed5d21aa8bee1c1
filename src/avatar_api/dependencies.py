"""Request-scoped dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api import rate_limit
from avatar_api.auth.service import (
    Principal,
    PrincipalCache,
    authenticate_digest,
    hash_key,
    require_secret,
)
from avatar_api.db import Reader, session_scope
from avatar_api.observability.context import bind_principal
from avatar_api.services import Services
from avatar_api.settings import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with session_scope(request.app.state.sessionmaker) as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with session_scope(request.app.state.read_sessionmaker) as session:
        yield session


# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def`
# dependency in a worker thread, a thread hop on every request.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# scope="function" runs the commit before the response is sent: a 2xx is never
# answered for effects that could still fail to commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
# For routes that only read: no transaction round trips (see db.create_read_sessionmaker).
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
# For the hot read paths: connections without a session (see db.Reader).
ReaderDep = Annotated[Reader, Depends(get_reader)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer avk_...`")


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    state = request.app.state
    digest = hash_key(require_secret(credentials.credentials if credentials else None))
    cache: PrincipalCache = state.principal_cache

    async def lookup() -> Principal:
        # Its own short read: the request's unit of work starts only when the route needs
        # it, so long requests (uploads) hold no transaction while they stream.
        async with session_scope(state.read_sessionmaker) as session:
            return await authenticate_digest(session, digest)

    principal = await cache.get_or_load(digest, lookup)
    bind_principal(tenant_id=principal.tenant_id, api_key_id=principal.api_key_id)
    limiter: rate_limit.RateLimiter | None = state.rate_limiter
    if limiter is not None:
        # Counted in its own transaction, so it sticks even when the request later fails.
        rate_limit.enforce(await limiter.check(principal.api_key_id))
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
