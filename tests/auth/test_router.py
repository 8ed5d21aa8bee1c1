from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import (
    Principal,
    PrincipalCache,
    authenticate,
    hash_key,
    list_api_keys,
    revoke_api_key,
)
from avatar_api.errors import Unauthorized
from avatar_api.models import ApiKey

PROTECTED = [
    ("GET", "/v1/avatars"),
    ("POST", "/v1/avatars"),
    ("GET", "/v1/avatars/00000000-0000-0000-0000-000000000000"),
    ("PATCH", "/v1/avatars/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v1/avatars/00000000-0000-0000-0000-000000000000"),
    ("GET", "/v1/training-types"),
]


@pytest.mark.parametrize(("method", "url"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer avk_wrong", "Basic dXNlcjpwYXNz", "Bearer ", "avk_raw"]
)
async def test_protected_routes_need_a_valid_key(
    app: FastAPI, method: str, url: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.request(method, url, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_keys_are_stored_hashed_and_revocable(
    session: AsyncSession, api_key: str, app: FastAPI, client: httpx.AsyncClient
) -> None:
    now = [1000.0]
    cache = PrincipalCache(10.0, clock=lambda: now[0])
    app.state.principal_cache = cache
    rows = await list_api_keys(session)
    stored = [key for key, _ in rows if key.key_hash == hash_key(api_key)]
    assert len(stored) == 1
    assert api_key not in stored[0].model_dump_json()
    assert stored[0].prefix == api_key[:12]

    assert (await client.get("/v1/avatars")).status_code == 200
    assert cache.get(hash_key(api_key)) is not None
    await revoke_api_key(session, api_key_id=stored[0].id)
    await session.commit()
    # This process trusts the key it checked for the cache's lifetime, then looks again.
    now[0] += 9.9
    assert (await client.get("/v1/avatars")).status_code == 200
    now[0] += 0.1
    assert (await client.get("/v1/avatars")).status_code == 401
    assert cache.get(hash_key(api_key)) is None
    with pytest.raises(Unauthorized):
        await authenticate(session, secret=api_key)


async def test_revoking_unknown_key_is_404(session: AsyncSession) -> None:
    with pytest.raises(Exception, match="No API key") as info:
        await revoke_api_key(session, api_key_id=uuid.uuid4())
    assert getattr(info.value, "status_code", None) == 404
    assert isinstance(await session.get(ApiKey, uuid.uuid4()), type(None))


def test_principal_cache_is_bounded_and_keeps_only_what_it_is_given() -> None:
    now = [0.0]
    cache = PrincipalCache(5.0, max_entries=3, clock=lambda: now[0])
    principals = {
        f"d{i}": Principal(tenant_id=uuid.uuid4(), api_key_id=uuid.uuid4()) for i in range(4)
    }
    for digest, principal in principals.items():
        cache.put(digest, principal)
    # The oldest entry made room for the fourth.
    assert cache.get("d0") is None
    assert [cache.get(f"d{i}") for i in (1, 2, 3)] == [principals[f"d{i}"] for i in (1, 2, 3)]
    now[0] = 5.0
    assert cache.get("d3") is None

    disabled = PrincipalCache(0.0)
    disabled.put("d0", principals["d0"])
    assert disabled.get("d0") is None


async def test_concurrent_misses_on_one_key_share_one_lookup() -> None:
    cache = PrincipalCache(10.0)
    principal = Principal(tenant_id=uuid.uuid4(), api_key_id=uuid.uuid4())
    release = asyncio.Event()
    lookups: list[str] = []

    async def load() -> Principal:
        lookups.append("query")
        await release.wait()
        return principal

    callers = [asyncio.create_task(cache.get_or_load("d", load)) for _ in range(5)]
    await asyncio.sleep(0.01)
    callers[0].cancel()  # a caller that goes away does not cancel the lookup for the others
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*callers[1:]), 1) == [principal] * 4
    assert lookups == ["query"]
    assert await cache.get_or_load("d", load) == principal  # cached now
    assert lookups == ["query"]


async def test_a_failed_lookup_is_shared_and_not_cached() -> None:
    cache = PrincipalCache(10.0)
    lookups: list[str] = []

    async def refuse() -> Principal:
        lookups.append("query")
        await asyncio.sleep(0.01)
        raise Unauthorized("Unknown or revoked API key.")

    outcomes = await asyncio.gather(
        *(cache.get_or_load("d", refuse) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, Unauthorized) for o in outcomes)
    assert lookups == ["query"]
    with pytest.raises(Unauthorized):
        await cache.get_or_load("d", refuse)  # looked up again, not remembered
    assert lookups == ["query", "query"]
