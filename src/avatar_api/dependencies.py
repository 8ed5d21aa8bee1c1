"""Request-scoped dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal, authenticate
from avatar_api.db import session_scope
from avatar_api.services import Services
from avatar_api.settings import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with session_scope(request.app.state.sessionmaker) as session:
        yield session


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# scope="function" runs the commit before the response is sent: a 2xx is never
# answered for effects that could still fail to commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer avk_...`")


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # Its own short transaction: the request's unit of work starts only when the route
    # needs it, so long requests (uploads) hold no transaction while they stream.
    async with session_scope(request.app.state.sessionmaker) as session:
        return await authenticate(session, secret=credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
