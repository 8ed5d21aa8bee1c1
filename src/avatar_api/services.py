"""The app-wide collaborators, built once per process and handed to services and jobs."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.settings import Settings

if TYPE_CHECKING:
    from avatar_api.fal.gateway import TrainerGateway
    from avatar_api.storage.base import ObjectStorage


@dataclass
class Services:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    storage: ObjectStorage
    gateway: TrainerGateway
    http: httpx.AsyncClient
    clock: Callable[[], datetime] = field(default=utcnow)

    async def aclose(self) -> None:
        """Release network clients; the process is shutting down."""
        for resource in (self.gateway, self.storage):
            close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if close is None:
                continue
            if inspect.iscoroutinefunction(close):
                await close()
            else:
                await asyncio.to_thread(close)
        await self.http.aclose()
