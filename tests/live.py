"""A live stack for end-to-end tests: real commits, the real app, worker and simulator.

Everything runs in one event loop: the app behind an in-process ASGI transport, which is
also the HTTP client the simulator uses to download archives and deliver webhooks (so
"fal" reaches our webhook URL exactly as it would over the network).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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


@contextlib.asynccontextmanager
async def live_stack(settings: Settings, *, tenant: str = "live") -> AsyncIterator[LiveStack]:
    engine = create_engine(settings)
    await wipe(engine)
    sessionmaker = create_sessionmaker(engine)
    transport = httpx.ASGITransport(app=FastAPI())
    http = httpx.AsyncClient(transport=transport, base_url=settings.public_base_url)
    app = create_app(settings, sessionmaker=sessionmaker, http=http)
    transport.app = app  # the app's own outgoing calls come back to it
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
        await app.state.services.aclose()
        await wipe(engine)
        await engine.dispose()
        await app.state.engine.dispose()


async def json_of(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()
