"""A connection pool whose waiters are served first come, first served.

SQLAlchemy's asyncio pool keeps its idle connections in an ``asyncio.Queue``. When the pool
is exhausted that queue is not fair: a returned connection stays in the queue until the
waiter it woke gets to run, a request arriving in between takes it first, and the waiter
that lost it goes back to the end of the line. Under load (more requests in flight than
connections) some requests lose again and again: on ``GET /v1/avatars/{id}`` at 64
connections against a pool of 20, server-side p99 was 4x the median and the slowest
request waited 0.8 s. Here a returned connection is handed straight to the longest waiter,
and nobody takes one while others are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import memoized_property
from sqlalchemy.util.queue import AsyncAdaptedQueue

T = TypeVar("T")


class FairQueue(asyncio.Queue[T]):
    """``asyncio.Queue`` with hand-off: ``get`` is served in arrival order, always."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._waiting: deque[asyncio.Future[T]] = deque()

    def put_nowait(self, item: T) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        super().put_nowait(item)

    def get_nowait(self) -> T:
        if self._waiting:
            raise asyncio.QueueEmpty  # the ones already waiting come first
        return super().get_nowait()

    async def get(self) -> T:
        if not self._waiting and not self.empty():
            return super().get_nowait()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed over just as this waiter gave up (timeout, cancel): pass it on.
                self.put_nowait(waiter.result())
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # already popped by put_nowait
                    self._waiting.remove(waiter)
            raise


class _FairAdaptedQueue(AsyncAdaptedQueue[T]):
    @memoized_property
    def _queue(self) -> asyncio.Queue[T]:
        # Created on first use, in the running loop, as SQLAlchemy's own queue is.
        return FairQueue(maxsize=self.maxsize)


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool with a :class:`FairQueue` of idle connections."""

    _queue_class: Any = _FairAdaptedQueue
