"""Per-API-key rate limit: a fixed one-minute window counted in the database.

The counter lives in ``rate_limit_windows`` so that every API process (on every machine)
counts against the same budget. One atomic upsert per request,
``INSERT ... ON CONFLICT DO UPDATE SET count = count + 1 RETURNING count``, on PostgreSQL
and SQLite alike: no read-modify-write race, no lost increments. Every authenticated
response carries the IETF draft ``RateLimit-*`` headers; a refused one is a 429 problem
(``rate_limited``) with ``Retry-After``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.errors import AppError
from avatar_api.models import RateLimitWindow
from avatar_api.observability.context import add_response_headers
from avatar_api.observability.metrics import RATE_LIMITED

WINDOW_SECONDS = 60


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


@dataclass(frozen=True)
class RateLimitDecision:
    limit: int
    count: int  # requests in this window, this one included
    reset_seconds: int  # until the window ends

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={WINDOW_SECONDS}",
        }


def window_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


async def count_request(
    session: AsyncSession, *, key_id: uuid.UUID, limit: int, now: datetime
) -> RateLimitDecision:
    """Count one request of ``key_id`` in the current window (flushes, never commits)."""
    start = window_start(now)
    table = RateLimitWindow.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    upsert = (
        insert(table)
        .values(key_id=key_id, window_start=start, count=1)
        .on_conflict_do_update(
            index_elements=[table.c.key_id, table.c.window_start],
            set_={"count": table.c["count"] + 1},
        )
        .returning(table.c["count"])
    )
    count = int((await session.exec(upsert)).scalar_one())
    if count == 1:
        # The first request of a new window: the key's older windows are of no more use.
        await session.exec(
            delete(RateLimitWindow).where(
                col(RateLimitWindow.key_id) == key_id, col(RateLimitWindow.window_start) < start
            )
        )
    ends = start + timedelta(seconds=WINDOW_SECONDS)
    reset = max(1, math.ceil((ends - now).total_seconds()))
    return RateLimitDecision(limit=limit, count=count, reset_seconds=reset)


def enforce(decision: RateLimitDecision) -> None:
    """Put the ``RateLimit-*`` headers on the response; raise 429 when over the limit."""
    add_response_headers(decision.headers())
    if not decision.allowed:
        RATE_LIMITED.inc()
        raise RateLimited(
            f"This API key may make {decision.limit} requests per minute; "
            f"retry in {decision.reset_seconds} s.",
            headers={"Retry-After": str(decision.reset_seconds)},
        )
