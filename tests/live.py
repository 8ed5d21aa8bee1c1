"""A live stack for end-to-end tests: real commits, the real app, worker and simulator.

Everything runs in one event loop: the app behind an in-process ASGI transport, which is
also the HTTP client the simulator uses to download archives and deliver webhooks (so
"fal" reaches our webhook URL exactly as it would over the network).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

import avatar_api.models  # noqa: F401
from avatar_api.app import create_app
from avatar_api.auth.service import create_api_key
from avatar_api.db import create_engine, create_sessionmaker, session_scope
from avatar_api.fal.gateway import TrainerGateway
from avatar_api.runtime import run_background
from avatar_api.settings import Settings


async def wipe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await conn.execute(delete(table))


@dataclass
class LiveStack:
    app: FastAPI
    engine: AsyncEngine
    client: httpx.AsyncClient
    settings: Settings
    stop: asyncio.Event
    background: asyncio.Task[None] | None = None
    extra_clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def client_for(self, tenant: str) -> httpx.AsyncClient:
        """A client with a fresh API key of ``tenant`` (closed with the stack)."""
        async with session_scope(self.app.state.sessionmaker) as session:
            issued = await create_api_key(session, tenant_name=tenant)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=self.settings.public_base_url,
            headers={"Authorization": f"Bearer {issued.secret}"},
        )
        self.extra_clients.append(client)
        return client

    def start_worker(self) -> None:
        self.background = asyncio.create_task(
            run_background(self.app.state.services, self.stop, concurrency=4)
        )

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], *, seconds: float = 30.0
    ) -> None:
        async with asyncio.timeout(seconds):
            while not await check():
                if self.background is not None and self.background.done():
                    self.background.result()
                    raise AssertionError("the worker stopped")
                await asyncio.sleep(0.05)


class RoutingTransport(httpx.AsyncBaseTransport):
    """Calls to the service's public URL go to the in-process app; others to the network
    (a local S3 server's presigned URLs, for instance)."""

    def __init__(self, public_base_url: str) -> None:
        self.app_transport = httpx.ASGITransport(app=FastAPI())
        self.network = httpx.AsyncHTTPTransport()
        self._origin = httpx.URL(public_base_url)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.host, url.port) == (self._origin.host, self._origin.port):
            return await self.app_transport.handle_async_request(request)
        return await self.network.handle_async_request(request)

    async def aclose(self) -> None:
        await self.network.aclose()


@contextlib.asynccontextmanager
async def live_stack(
    settings: Settings, *, tenant: str = "live", gateway: TrainerGateway | None = None
) -> AsyncIterator[LiveStack]:
    """``gateway`` replaces the one the settings select (the simulator in test mode)."""
    engine = create_engine(settings)
    await wipe(engine)
    sessionmaker = create_sessionmaker(engine)
    transport = RoutingTransport(settings.public_base_url)
    http = httpx.AsyncClient(transport=transport)
    app = create_app(settings, sessionmaker=sessionmaker, http=http, gateway=gateway)
    transport.app_transport.app = app  # the app's own outgoing calls come back to it
    async with session_scope(sessionmaker) as session:
        issued = await create_api_key(session, tenant_name=tenant)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=settings.public_base_url,
        headers={"Authorization": f"Bearer {issued.secret}"},
    )
    stack = LiveStack(
        app=app, engine=engine, client=client, settings=settings, stop=asyncio.Event()
    )
    try:
        yield stack
    finally:
        stack.stop.set()
        if stack.background is not None:
            await stack.background
        await client.aclose()
        for extra in stack.extra_clients:
            await extra.aclose()
        await app.state.services.aclose()
        await wipe(engine)
        await engine.dispose()
        await app.state.engine.dispose()


async def json_of(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()
