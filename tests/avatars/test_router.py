from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Avatar, AvatarStatus

PROBLEM = "application/problem+json"


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": "Anna", "training_type": "portrait", **overrides}
    response = await client.post("/v1/avatars", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def set_status(session: AsyncSession, avatar_id: str, status: AvatarStatus) -> None:
    avatar = await session.get(Avatar, uuid.UUID(avatar_id))
    assert avatar is not None
    avatar.status = status
    session.add(avatar)
    await session.commit()


async def test_create_avatar_defaults(client: httpx.AsyncClient) -> None:
    data = await create(client, external_user_id="tg:42", metadata={"plan": "pro"})
    assert data["status"] == "draft"
    assert data["gender"] == "unspecified"
    assert data["external_user_id"] == "tg:42"
    assert data["metadata"] == {"plan": "pro"}
    assert data["trigger_phrase"].startswith("PERSON_")
    assert len(data["trigger_phrase"]) == len("PERSON_") + 8
    style = await create(client, training_type="style", trigger_phrase="MYSTYLE")
    assert style["trigger_phrase"] == "MYSTYLE"


async def test_generated_trigger_phrases_differ(client: httpx.AsyncClient) -> None:
    phrases = {(await create(client))["trigger_phrase"] for _ in range(5)}
    assert len(phrases) == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "training_type": "portrait"}, "name"),
        ({"name": "x" * 101, "training_type": "portrait"}, "name"),
        ({"name": "A", "training_type": "video"}, "training_type"),
        ({"name": "A", "training_type": "portrait", "gender": "other"}, "gender"),
        ({"name": "A", "training_type": "portrait", "trigger_phrase": "a b"}, "trigger_phrase"),
        ({"name": "A", "training_type": "portrait", "trigger_phrase": "1ABC"}, "trigger_phrase"),
        ({"name": "A", "training_type": "portrait", "metadata": [1]}, "metadata"),
        ({"name": "A", "training_type": "portrait", "unknown": 1}, "unknown"),
        ({"name": "A", "training_type": "portrait", "external_user_id": "a/b"}, "external_user_id"),
    ],
)
async def test_create_validation_is_a_problem(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/avatars", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert any(err["loc"][:2] == ["body", field] for err in problem["errors"]), problem


async def test_metadata_size_capped(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/avatars",
        json={"name": "A", "training_type": "portrait", "metadata": {"x": "y" * 5000}},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "metadata_too_large"


async def test_malformed_json_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/avatars", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_get_update_delete(client: httpx.AsyncClient) -> None:
    avatar = await create(client)
    url = f"/v1/avatars/{avatar['id']}"
    assert (await client.get(url)).json() == avatar

    response = await client.patch(url, json={"name": "Anna B", "metadata": {"a": 1}})
    assert response.status_code == 200
    assert response.json()["name"] == "Anna B"
    assert response.json()["metadata"] == {"a": 1}
    assert response.json()["updated_at"] >= avatar["updated_at"]

    receipt = await client.delete(url)
    assert receipt.status_code == 200
    assert receipt.json()["avatar_id"] == avatar["id"]
    assert receipt.json()["database"]["avatars"] == 1
    missing = await client.get(url)
    assert missing.status_code == 404
    assert missing.json()["code"] == "avatar_not_found"


@pytest.mark.parametrize("status", [AvatarStatus.queued, AvatarStatus.training])
async def test_update_refused_while_training(
    client: httpx.AsyncClient, session: AsyncSession, status: AvatarStatus
) -> None:
    avatar = await create(client)
    await set_status(session, avatar["id"], status)
    response = await client.patch(f"/v1/avatars/{avatar['id']}", json={"name": "New"})
    assert response.status_code == 409
    assert response.json()["code"] == "avatar_not_editable"
    assert (await client.get(f"/v1/avatars/{avatar['id']}")).json()["name"] == "Anna"


async def test_list_paginates_newest_first(client: httpx.AsyncClient) -> None:
    created = [await create(client, name=f"A{i}") for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/avatars", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [a["id"] for a in reversed(created)]


async def test_list_filters(client: httpx.AsyncClient, session: AsyncSession) -> None:
    a = await create(client, external_user_id="u1")
    b = await create(client, external_user_id="u2", training_type="style")
    await set_status(session, b["id"], AvatarStatus.failed)

    async def ids(**params: str) -> list[str]:
        response = await client.get("/v1/avatars", params=params)
        assert response.status_code == 200
        return [item["id"] for item in response.json()["items"]]

    assert await ids(external_user_id="u1") == [a["id"]]
    assert await ids(training_type="style") == [b["id"]]
    assert await ids(status="failed") == [b["id"]]
    assert await ids(status="draft") == [a["id"]]


@pytest.mark.parametrize("cursor", ["garbage", "bm90LWEtY3Vyc29y", "x" * 201])
async def test_bad_cursor(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/v1/avatars", params={"cursor": cursor})
    assert response.status_code == 422
    assert response.json()["code"] in {"invalid_cursor", "validation_error"}


async def test_other_tenant_sees_404_everywhere(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    avatar = await create(client)
    url = f"/v1/avatars/{avatar['id']}"
    responses = [
        await other_client.get(url),
        await other_client.patch(url, json={"name": "stolen"}),
        await other_client.delete(url),
    ]
    for response in responses:
        assert response.status_code == 404
        assert response.json()["code"] == "avatar_not_found"
    assert (await other_client.get("/v1/avatars")).json()["items"] == []
    # And the owner still has it, unchanged.
    assert (await client.get(url)).json() == avatar


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["code"] == "not_found"
    wrong = await client.put("/v1/avatars")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"
    bad_id = await client.get("/v1/avatars/not-a-uuid")
    assert bad_id.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/avatars", "GET, POST"),
        ("PUT", f"/v1/avatars/{uuid.UUID(int=1)}", "GET, PATCH, DELETE"),
        ("DELETE", "/healthz", "GET"),
    ],
)
async def test_a_405_names_every_method_the_path_takes(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    answer = await client.request(method, path)
    assert answer.status_code == 405
    assert answer.json()["code"] == "method_not_allowed"
    assert answer.headers["Allow"] == allow
    # Every method named is served there (an unknown id is a 404, not a 405).
    for allowed in allow.split(", "):
        assert (await client.request(allowed, path, json={})).status_code != 405
