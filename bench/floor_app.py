"""A reference point for the reads benchmark: bare FastAPI plus one primary-key SELECT.

No auth, no rate limit, no logging, no ORM: one SQLAlchemy Core query on the same
database and driver as ours (PostgreSQL through asyncpg, autocommit, a fixed pool of the
same size). It shows how much of the distance to the bare route is the database read
itself, which any implementation of `GET /v1/avatars/{id}` must make.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(
    os.environ["AVATAR_DATABASE_URL"], pool_size=20, max_overflow=0
).execution_options(isolation_level="AUTOCOMMIT")
QUERY = text("SELECT id, name, status FROM avatars WHERE id = :id")


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/avatars/{avatar_id}")
async def get_avatar(avatar_id: uuid.UUID) -> dict[str, str]:
    async with engine.connect() as conn:
        row = (await conn.execute(QUERY, {"id": avatar_id})).first()
    if row is None:
        raise HTTPException(404)
    return {"id": str(row.id), "name": row.name, "status": row.status}
