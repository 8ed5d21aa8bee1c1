"""Per-API-key rate limit: a fixed one-minute window counted in the database.

The counter lives in ``rate_limit_windows`` so that every API process (on every machine)
counts against the same budget. It moves by one atomic upsert,
``INSERT ... ON CONFLICT DO UPDATE SET count = count + n RETURNING count``, on PostgreSQL
and SQLite alike: no read-modify-write race, no lost increments. A process reserves a
block of the budget with one upsert and spends it locally (:class:`RateLimiter`), so a busy
key does not cost one database write per request. Every authenticated response carries
the IETF draft ``RateLimit-*`` headers; a refused one is a 429 problem (``rate_limited``)
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import insert_on, session_scope
from avatar_api.errors import AppError
from avatar_api.models import RateLimitWindow
from avatar_api.observability.context import add_response_headers
from avatar_api.observability.metrics import RATE_LIMITED

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# A process reserves at most this share of a key's per-minute budget at a time...
RESERVATION_DIVISOR = 50
# ...and never more than this many requests.
MAX_RESERVATION = 1000
# Keys whose window this process remembers before it forgets those of earlier minutes.
MAX_TRACKED_KEYS = 4000


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


def reset_seconds(start: datetime, now: datetime) -> int:
    ends = start + timedelta(seconds=WINDOW_SECONDS)
    return max(1, math.ceil((ends - now).total_seconds()))


async def count_request(
    session: AsyncSession, *, key_id: uuid.UUID, limit: int, now: datetime, amount: int = 1
) -> RateLimitDecision:
    """Add ``amount`` requests of ``key_id`` to the current window (flushes, never commits).

    The decision's ``count`` is the window's total after the addition.
    """
    start = window_start(now)
    table = RateLimitWindow.__table__  # type: ignore[attr-defined]
    upsert = (
        insert_on(session.get_bind().dialect.name, table)
        .values(key_id=key_id, window_start=start, count=amount)
        .on_conflict_do_update(
            index_elements=[table.c.key_id, table.c.window_start],
            set_={"count": table.c["count"] + amount},
        )
        .returning(table.c["count"])
    )
    count = int((await session.exec(upsert)).scalar_one())
    if count == amount:
        # The first request of a new window: the key's older windows are of no more use.
        await session.exec(
            delete(RateLimitWindow).where(
                col(RateLimitWindow.key_id) == key_id, col(RateLimitWindow.window_start) < start
            )
        )
    return RateLimitDecision(limit=limit, count=count, reset_seconds=reset_seconds(start, now))


@dataclass
class _Window:
    """One key's current window, as this process sees it."""

    start: datetime
    counted: int = 0  # the shared count after our last reservation, capped at the limit
    left: int = 0  # reserved by this process and not spent yet
    exhausted: bool = False  # the shared budget is spent: refuse until the window ends
    reserving: asyncio.Task[None] | None = None  # the reservation in flight, if any


class RateLimiter:
    """This process's view of every key's shared budget.

    A key's first request in a window, and each time the process's reserved block runs
    low, adds a block to the shared count in one short transaction; the requests in between
    are counted in memory. The block is 1/50 of the limit (at least one request, at most
    1,000): with a small limit every request is still counted in the database, and with
    several API processes a key is never admitted beyond its limit - at worst it is refused
    early by budget that other processes reserved and did not use.

    With blocks of four or more (limits from 200 a minute), the next block is reserved when
    a quarter of the current one is left, while requests go on spending the rest, so a busy
    key does not stall at every block. Requests that do find the block empty all wait on the
    one reservation in flight and wake together.
    """

    def __init__(
        self,
        *,
        limit: int,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime],
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.block = max(1, min(limit // RESERVATION_DIVISOR, MAX_RESERVATION))
        self.low_water = self.block // 4
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._windows: dict[uuid.UUID, _Window] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def check(self, key_id: uuid.UUID) -> RateLimitDecision:
        """Count one request of ``key_id``; the decision says whether it is allowed."""
        now = self._clock()
        window = self._current(key_id, window_start(now))
        while window.left == 0 and not window.exhausted:
            # Shielded: a caller that goes away does not cancel the others' reservation.
            await asyncio.shield(self._reservation(key_id, window, now))
            current = self._clock()
            if window_start(current) != window.start:
                # The wait crossed into the next window: count the request there.
                now = current
                window = self._current(key_id, window_start(now))
        reset = reset_seconds(window.start, now)
        if window.left == 0:
            return RateLimitDecision(limit=self.limit, count=self.limit + 1, reset_seconds=reset)
        window.left -= 1
        if self.low_water and window.left <= self.low_water and not window.exhausted:
            self._reservation(key_id, window, now)  # ahead of need, in the background
        return RateLimitDecision(
            limit=self.limit, count=window.counted - window.left, reset_seconds=reset
        )

    async def aclose(self) -> None:
        """Wait for the reservations in flight (at shutdown)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _current(self, key_id: uuid.UUID, start: datetime) -> _Window:
        window = self._windows.get(key_id)
        if window is None or window.start != start:
            if window is None and len(self._windows) >= MAX_TRACKED_KEYS:
                # Forget the keys that were last seen in an earlier window.
                self._windows = {k: w for k, w in self._windows.items() if w.start == start}
            window = self._windows[key_id] = _Window(start=start)
        return window

    def _reservation(self, key_id: uuid.UUID, window: _Window, now: datetime) -> asyncio.Task[None]:
        """The window's reservation in flight, started now if there is none."""
        task = window.reserving
        if task is None or task.done():
            # In a context of its own: it serves every request of the key, and its log
            # lines belong to none of them.
            task = asyncio.get_running_loop().create_task(
                self._reserve_once(key_id, window, now), context=contextvars.Context()
            )
            window.reserving = task
            self._pending.add(task)
            task.add_done_callback(self._forget)
        return task

    async def _reserve_once(self, key_id: uuid.UUID, window: _Window, now: datetime) -> None:
        try:
            await self._reserve(key_id, window, now)
        except Exception:
            # The requests waiting for it (if any) fail with the error; later ones try again.
            logger.warning(
                "rate_limit.reservation_failed", extra={"api_key_id": str(key_id)}, exc_info=True
            )
            raise
        finally:
            # Cleared before the task counts as done, so that a waiter woken by it which
            # still finds the block empty starts a new reservation instead of awaiting
            # this finished one (which would not yield to the event loop) again and again.
            if window.reserving is asyncio.current_task():
                window.reserving = None

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # logged above; retrieved so that asyncio does not warn again

    async def _reserve(self, key_id: uuid.UUID, window: _Window, now: datetime) -> None:
        async with session_scope(self._sessionmaker) as session:
            total = (
                await count_request(
                    session, key_id=key_id, limit=self.limit, now=now, amount=self.block
                )
            ).count
        before = total - self.block
        granted = max(0, min(self.block, self.limit - before))
        window.left += granted
        window.counted = before + granted
        window.exhausted = granted < self.block


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
