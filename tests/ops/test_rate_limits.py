"""Per-API-key rate limit: counted in the database, shared by every API process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.app import create_app
from avatar_api.auth.service import authenticate, create_api_key
from avatar_api.db import create_sessionmaker, session_scope
from avatar_api.models import RateLimitWindow, Tenant
from avatar_api.rate_limit import RateLimitDecision, RateLimiter, count_request
from tests.conftest import make_settings
from tests.fakes import RecordingGateway

LIMIT = 3


def limited_app(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    limit: int = LIMIT,
) -> FastAPI:
    settings = make_settings(
        database_url=database_url,
        storage_local_root=tmp_path / "storage",
        rate_limit_per_minute=limit,
    )
    return create_app(settings, sessionmaker=sessionmaker, gateway=RecordingGateway())


def client_for(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )


async def test_every_authenticated_response_says_the_budget_and_the_excess_is_refused(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    api_key: str,
    other_api_key: str,
) -> None:
    app = limited_app(database_url, tmp_path, sessionmaker)
    async with client_for(app, api_key) as client, client_for(app, other_api_key) as other:
        answers = [
            await client.get("/v1/avatars"),
            await client.get(f"/v1/avatars/{uuid.uuid4()}"),  # a problem response counts too
            await client.get("/v1/avatars"),
        ]
        assert [a.status_code for a in answers] == [200, 404, 200]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
        for answer in answers:
            assert answer.headers["RateLimit-Limit"] == str(LIMIT)
            assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 60
            assert answer.headers["RateLimit-Policy"] == f"{LIMIT};w=60"

        refused = await client.get("/v1/avatars")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "rate_limited"
        assert refused.json()["status"] == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert refused.headers["RateLimit-Reset"] == str(retry_after)
        assert refused.headers["X-Request-ID"]

        # Another key has its own budget; unauthenticated routes carry no budget at all.
        assert (await other.get("/v1/avatars")).headers["RateLimit-Remaining"] == "2"
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert "RateLimit-Limit" not in health.headers


async def test_the_budget_is_shared_by_every_api_process(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    api_key: str,
) -> None:
    # Two app instances stand for two API processes: only the database is shared.
    first = limited_app(database_url, tmp_path, sessionmaker)
    second = limited_app(database_url, tmp_path, sessionmaker)
    async with client_for(first, api_key) as one, client_for(second, api_key) as two:
        statuses = [
            (await one.get("/v1/avatars")).status_code,
            (await two.get("/v1/avatars")).status_code,
            (await one.get("/v1/avatars")).status_code,
            (await two.get("/v1/avatars")).status_code,
        ]
    assert statuses == [200, 200, 200, 429]


async def test_zero_disables_the_limit(
    database_url: str,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    api_key: str,
) -> None:
    app = limited_app(database_url, tmp_path, sessionmaker, limit=0)
    async with client_for(app, api_key) as client:
        for _ in range(LIMIT + 2):
            answer = await client.get("/v1/avatars")
            assert answer.status_code == 200
            assert "RateLimit-Limit" not in answer.headers
    principal = await authenticate(session, secret=api_key)
    rows = await session.exec(
        select(RateLimitWindow).where(RateLimitWindow.key_id == principal.api_key_id)
    )
    assert rows.all() == []


async def test_windows_roll_over_and_old_ones_are_purged(
    session: AsyncSession, api_key: str
) -> None:
    key_id = (await authenticate(session, secret=api_key)).api_key_id
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    first = await count_request(session, key_id=key_id, limit=2, now=start + timedelta(seconds=15))
    assert (first.count, first.remaining, first.reset_seconds) == (1, 1, 45)
    second = await count_request(
        session, key_id=key_id, limit=2, now=start + timedelta(seconds=59.5)
    )
    assert (second.count, second.reset_seconds, second.allowed) == (2, 1, True)
    third = await count_request(
        session, key_id=key_id, limit=2, now=start + timedelta(seconds=59.9)
    )
    assert (third.count, third.allowed, third.remaining) == (3, False, 0)

    next_minute = await count_request(
        session, key_id=key_id, limit=2, now=start + timedelta(seconds=61)
    )
    assert (next_minute.count, next_minute.allowed, next_minute.reset_seconds) == (1, True, 59)
    rows = (
        await session.exec(select(RateLimitWindow).where(RateLimitWindow.key_id == key_id))
    ).all()
    assert [(row.window_start, row.count) for row in rows] == [(start + timedelta(minutes=1), 1)]


@pytest.fixture
async def committed_key(engine: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    maker = create_sessionmaker(engine)
    async with session_scope(maker) as session:
        issued = await create_api_key(session, tenant_name=f"rate-{uuid.uuid4().hex[:8]}")
    try:
        yield issued.api_key.id
    finally:
        async with session_scope(maker) as session:
            # Cascades to the key and its windows.
            await session.exec(delete(Tenant).where(col(Tenant.id) == issued.tenant.id))


async def test_concurrent_requests_never_lose_a_count(
    engine: AsyncEngine, committed_key: uuid.UUID
) -> None:
    """Separate transactions at once (as from several processes): each gets its own count."""
    maker = create_sessionmaker(engine)
    now = datetime.now(UTC)
    requests = 12

    async def one() -> int:
        async with session_scope(maker) as session:
            decision = await count_request(session, key_id=committed_key, limit=5, now=now)
        return decision.count

    counts = await asyncio.gather(*(one() for _ in range(requests)))
    assert sorted(counts) == list(range(1, requests + 1))


def _limiter(engine: AsyncEngine, limit: int, now: datetime) -> RateLimiter:
    return RateLimiter(limit=limit, sessionmaker=create_sessionmaker(engine), clock=lambda: now)


async def _shared_count(engine: AsyncEngine, key_id: uuid.UUID) -> int:
    async with session_scope(create_sessionmaker(engine)) as session:
        rows = await session.exec(select(RateLimitWindow).where(RateLimitWindow.key_id == key_id))
        return sum(row.count for row in rows.all())


async def test_a_busy_key_reserves_blocks_instead_of_writing_per_request(
    engine: AsyncEngine, committed_key: uuid.UUID
) -> None:
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    limiter = _limiter(engine, 500, now)
    assert limiter.block == 10

    decisions = [await limiter.check(committed_key) for _ in range(25)]
    # Three blocks of ten reserved in the shared counter for 25 requests...
    assert await _shared_count(engine, committed_key) == 30
    # ...and the headers count the requests themselves.
    assert [d.count for d in decisions] == list(range(1, 26))
    assert decisions[-1].remaining == 475
    assert all(d.allowed and d.reset_seconds == 30 for d in decisions)


async def test_processes_reserving_blocks_never_admit_beyond_the_limit(
    engine: AsyncEngine, committed_key: uuid.UUID
) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    limit = 120  # blocks of 2
    processes = [_limiter(engine, limit, now) for _ in range(3)]

    async def hammer(limiter: RateLimiter) -> int:
        admitted = 0
        for _ in range(60):
            admitted += (await limiter.check(committed_key)).allowed
        return admitted

    admitted = await asyncio.gather(*(hammer(p) for p in processes))
    # 180 requests against 120: never more, and at most (3 - 1) blocks fewer.
    assert limit - 2 * 2 <= sum(admitted) <= limit

    # Once a process has seen the shared budget spent, its refusals cost no more writes.
    for limiter in processes:
        assert not (await limiter.check(committed_key)).allowed
    spent = await _shared_count(engine, committed_key)
    for limiter in processes:
        refused = await limiter.check(committed_key)
        assert not refused.allowed
        assert refused.remaining == 0
    assert await _shared_count(engine, committed_key) == spent

    # A new window starts a new budget.
    later = _limiter(engine, limit, now + timedelta(minutes=1))
    assert (await later.check(committed_key)).count == 1


async def test_a_request_that_waited_into_the_next_minute_is_counted_there(
    engine: AsyncEngine, committed_key: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [datetime(2026, 1, 1, 12, 0, 59, tzinfo=UTC)]
    limiter = RateLimiter(limit=3, sessionmaker=create_sessionmaker(engine), clock=lambda: clock[0])
    gate = asyncio.Event()
    reserve = limiter._reserve

    async def slow_reserve(key_id: uuid.UUID, window: Any, now: datetime) -> None:
        await gate.wait()  # the database is slow: both requests wait on the reservation
        await reserve(key_id, window, now)

    monkeypatch.setattr(limiter, "_reserve", slow_reserve)
    first = asyncio.create_task(limiter.check(committed_key))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(limiter.check(committed_key))
    await asyncio.sleep(0.05)
    clock[0] = datetime(2026, 1, 1, 12, 1, 0, 500_000, tzinfo=UTC)
    gate.set()

    one, two = await first, await second
    # Not spent from the minute that ended while they waited (its row may already be gone).
    assert sorted((d.count, d.reset_seconds) for d in (one, two)) == [(1, 60), (2, 60)]
    async with session_scope(create_sessionmaker(engine)) as session:
        rows = await session.exec(
            select(RateLimitWindow).where(RateLimitWindow.key_id == committed_key)
        )
        assert [(row.window_start.minute, row.count) for row in rows.all()] == [(1, 2)]


def _spy_reservations(
    limiter: RateLimiter, monkeypatch: pytest.MonkeyPatch, gate: asyncio.Event | None = None
) -> list[int]:
    """Record each reservation (the window's unspent budget when it started)."""
    started: list[int] = []
    reserve = limiter._reserve

    async def spied(key_id: uuid.UUID, window: Any, now: datetime) -> None:
        started.append(window.left)
        if gate is not None:
            await gate.wait()
        await reserve(key_id, window, now)

    monkeypatch.setattr(limiter, "_reserve", spied)
    return started


async def test_the_next_block_is_reserved_while_the_current_one_is_still_being_spent(
    engine: AsyncEngine, committed_key: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = _limiter(engine, 500, datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    assert (limiter.block, limiter.low_water) == (10, 2)
    started = _spy_reservations(limiter, monkeypatch)

    for _ in range(8):
        await limiter.check(committed_key)
    # Two of the first block left: the second one is reserved in the background...
    await limiter.aclose()
    assert started == [0, 2]
    assert await _shared_count(engine, committed_key) == 20
    # ...so the requests that spend the rest of the first block and all of the second
    # never wait for the database, and the headers still count requests, not reservations.
    decisions = [await limiter.check(committed_key) for _ in range(10)]
    assert [d.count for d in decisions] == list(range(9, 19))
    await limiter.aclose()
    assert started == [0, 2, 2]  # the third block, again ahead of need


async def test_requests_that_find_the_block_empty_share_one_reservation(
    engine: AsyncEngine, committed_key: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = _limiter(engine, 500, datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    gate = asyncio.Event()
    started = _spy_reservations(limiter, monkeypatch, gate)

    waiting = [asyncio.create_task(limiter.check(committed_key)) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert started == [0]  # eight requests, one reservation in flight
    waiting[0].cancel()  # a caller that goes away does not cancel it for the others
    gate.set()
    decisions = await asyncio.gather(*waiting[1:])
    assert sorted(d.count for d in decisions) == list(range(1, 8))
    assert all(d.allowed for d in decisions)
    assert started == [0]  # still the one: the cancelled caller's reservation served the rest


async def test_requests_that_wake_as_a_reservation_ends_and_find_it_spent_start_another(
    engine: AsyncEngine, committed_key: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = _limiter(engine, 120, datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    assert limiter.block == 2
    ready = asyncio.Event()
    reserve = limiter._reserve

    async def reserve_then_others_ready(key_id: uuid.UUID, window: Any, now: datetime) -> None:
        await reserve(key_id, window, now)
        ready.set()  # more requests become ready in the very turn the reservation ends

    monkeypatch.setattr(limiter, "_reserve", reserve_then_others_ready)
    reservation, asked = limiter._reservation, [0]

    def bounded(*args: Any) -> asyncio.Task[None]:
        asked[0] += 1  # a request spinning without yielding would never let a timeout fire
        if asked[0] > 100:
            raise AssertionError("check() keeps asking for the same finished reservation")
        return reservation(*args)

    monkeypatch.setattr(limiter, "_reservation", bounded)

    async def request() -> RateLimitDecision:
        await ready.wait()
        return await limiter.check(committed_key)

    # The block of two is spent by the first two to run; the third must not spin on the
    # finished reservation (that froze the event loop) but make a new one.
    others = [asyncio.create_task(request()) for _ in range(limiter.block + 1)]
    first = asyncio.create_task(limiter.check(committed_key))
    decisions = await asyncio.wait_for(asyncio.gather(first, *others), 5)
    assert sorted(d.count for d in decisions) == [1, 2, 3, 4]
