from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Job, WebhookDelivery, WebhookEndpoint
from avatar_api.settings import Settings
from avatar_api.webhooks.signing import decrypt_secret

PROBLEM = "application/problem+json"
BASE = "/v1/webhook-endpoints"
EVENTS = ["avatar.training.completed", "avatar.training.failed"]


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {"url": "https://hooks.example.com/avatar", "events": EVENTS, **overrides}
    response = await client.post(BASE, json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def send_test(client: httpx.AsyncClient, endpoint_id: str) -> dict[str, Any]:
    response = await client.post(f"{BASE}/{endpoint_id}/test")
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_create_shows_the_secret_once(client: httpx.AsyncClient) -> None:
    created = await create(client)
    assert created["url"] == "https://hooks.example.com/avatar"
    assert created["events"] == EVENTS
    assert created["enabled"] is True
    assert created["disabled_reason"] is None
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32

    fetched = await client.get(f"{BASE}/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == {k: v for k, v in created.items() if k != "secret"}
    listed = await client.get(BASE)
    for response in (fetched, listed):
        assert "secret" not in response.text
        assert secret not in response.text
    # Every endpoint gets its own secret.
    assert (await create(client))["secret"] != secret


async def test_secret_is_encrypted_at_rest(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    created = await create(client)
    endpoint = await session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    assert endpoint is not None
    assert created["secret"] not in endpoint.encrypted_secret
    assert created["secret"].removeprefix("whsec_") not in endpoint.encrypted_secret
    assert decrypt_secret(endpoint.encrypted_secret, key=settings.secret_key) == created["secret"]


async def test_repeated_events_are_stored_once(client: httpx.AsyncClient) -> None:
    created = await create(
        client,
        events=["avatar.deleted", "generation.completed", "avatar.deleted", "webhook.test"],
    )
    assert created["events"] == ["avatar.deleted", "generation.completed", "webhook.test"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": EVENTS}, "url"),
        ({"url": "https://hooks.example.com/x"}, "events"),
        ({"url": "https://hooks.example.com/x", "events": []}, "events"),
        ({"url": "https://hooks.example.com/x", "events": ["avatar.exploded"]}, "events"),
        ({"url": "https://hooks.example.com/x", "events": "avatar.deleted"}, "events"),
        ({"url": "", "events": EVENTS}, "url"),
        ({"url": "https://hooks.example.com/" + "x" * 2048, "events": EVENTS}, "url"),
        ({"url": "https://hooks.example.com/x", "events": EVENTS, "secret": "mine"}, "secret"),
    ],
)
async def test_create_validation_is_a_problem(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post(BASE, json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert any(err["loc"][:2] == ["body", field] for err in problem["errors"]), problem


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://internal.example.com/hook", "internal.example.com resolves to 10.0.0.7"),
        ("https://metadata.example.com/hook", "link-local"),
        ("https://mixed.example.com/hook", "127.0.0.1"),
        ("https://mapped.example.com/hook", "IPv4-mapped"),
        ("https://unknown.example.com/hook", "could not be resolved"),
        ("ftp://hooks.example.com/hook", "Only http and https"),
        ("https://me:pw@hooks.example.com/hook", "user name or password"),
    ],
)
async def test_unsafe_targets_are_refused(client: httpx.AsyncClient, url: str, detail: str) -> None:
    response = await client.post(BASE, json={"url": url, "events": EVENTS})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "webhook_url_not_allowed"
    assert detail in problem["detail"]
    assert (await client.get(BASE)).json()["items"] == []


@pytest.mark.parametrize(
    "url", ["https://v6.example.com/hook", "https://dual.example.com/hook", "http://8.8.8.8/x"]
)
async def test_public_targets_are_accepted(client: httpx.AsyncClient, url: str) -> None:
    assert (await create(client, url=url))["url"] == url


async def test_private_targets_allowed_only_when_configured(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    app.state.settings = settings.model_copy(update={"webhook_allow_private_targets": True})
    created = await create(client, url="http://127.0.0.1:9000/hook")
    assert created["url"] == "http://127.0.0.1:9000/hook"


async def test_endpoint_count_is_capped(
    app: FastAPI, client: httpx.AsyncClient, other_client: httpx.AsyncClient, settings: Settings
) -> None:
    app.state.settings = settings.model_copy(update={"webhook_max_endpoints_per_tenant": 2})
    first = await create(client)
    await create(client)
    response = await client.post(
        BASE, json={"url": "https://hooks.example.com/3", "events": EVENTS}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "webhook_endpoint_limit_reached"
    # The cap is per tenant.
    await create(other_client)
    # Deleting one makes room again.
    assert (await client.delete(f"{BASE}/{first['id']}")).status_code == 204
    await create(client)


async def test_list_paginates_newest_first(client: httpx.AsyncClient) -> None:
    created = [await create(client, url=f"https://hooks.example.com/{i}") for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(BASE, params=params)
        assert response.status_code == 200
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in reversed(created)]


async def test_bad_cursor_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get(BASE, params={"cursor": "garbage"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


async def test_delete_removes_the_endpoint_and_its_deliveries(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    created = await create(client)
    await send_test(client, created["id"])
    url = f"{BASE}/{created['id']}"
    assert (await client.delete(url)).status_code == 204
    missing = await client.get(url)
    assert missing.status_code == 404
    assert missing.json()["code"] == "webhook_endpoint_not_found"
    assert (await client.delete(url)).status_code == 404
    rows = await session.exec(
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == uuid.UUID(created["id"]))
    )
    assert rows.all() == []


async def test_test_event_queues_one_delivery_and_its_job(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    # Not subscribed to webhook.test: the test route sends it anyway, to this endpoint only.
    target = await create(client)
    await create(client, url="https://hooks.example.com/other")
    delivery = await send_test(client, target["id"])
    assert delivery["endpoint_id"] == target["id"]
    assert delivery["event_type"] == "webhook.test"
    assert delivery["status"] == "pending"
    assert delivery["attempts"] == 0
    assert delivery["event_id"].startswith("msg_")
    assert len(delivery["event_id"]) == len("msg_") + 32
    assert delivery["payload"]["type"] == "webhook.test"
    assert delivery["payload"]["data"]["endpoint_id"] == target["id"]
    assert delivery["payload"]["timestamp"].endswith("Z")

    jobs = (await session.exec(select(Job).where(col(Job.kind) == "webhook.deliver"))).all()
    assert [job.payload for job in jobs] == [{"delivery_id": delivery["id"]}]
    log = (await client.get(f"{BASE}/{target['id']}/deliveries")).json()
    assert log["items"] == [delivery]


async def test_test_event_refused_for_a_disabled_endpoint(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    created = await create(client)
    endpoint = await session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    assert endpoint is not None
    endpoint.enabled = False
    endpoint.disabled_reason = "The endpoint answered 410 Gone."
    session.add(endpoint)
    await session.commit()

    fetched = (await client.get(f"{BASE}/{created['id']}")).json()
    assert (fetched["enabled"], fetched["disabled_reason"]) == (
        False,
        "The endpoint answered 410 Gone.",
    )
    response = await client.post(f"{BASE}/{created['id']}/test")
    assert response.status_code == 409
    assert response.json()["code"] == "webhook_endpoint_disabled"


async def test_delivery_log_paginates_newest_first_and_filters(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    created = await create(client)
    sent = [await send_test(client, created["id"]) for _ in range(3)]
    url = f"{BASE}/{created['id']}/deliveries"
    first = (await client.get(url, params={"limit": 2})).json()
    assert [d["id"] for d in first["items"]] == [sent[2]["id"], sent[1]["id"]]
    second = (await client.get(url, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [d["id"] for d in second["items"]] == [sent[0]["id"]]
    assert second["next_cursor"] is None

    delivery = await session.get(WebhookDelivery, uuid.UUID(sent[0]["id"]))
    assert delivery is not None
    delivery.status = "succeeded"  # type: ignore[assignment]
    session.add(delivery)
    await session.commit()
    succeeded = (await client.get(url, params={"status": "succeeded"})).json()
    assert [d["id"] for d in succeeded["items"]] == [sent[0]["id"]]
    pending = (await client.get(url, params={"status": "pending"})).json()
    assert [d["id"] for d in pending["items"]] == [sent[2]["id"], sent[1]["id"]]


async def test_other_tenant_sees_404_everywhere(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    created = await create(client)
    await send_test(client, created["id"])
    url = f"{BASE}/{created['id']}"
    responses = [
        await other_client.get(url),
        await other_client.get(f"{url}/deliveries"),
        await other_client.post(f"{url}/test"),
        await other_client.delete(url),
    ]
    for response in responses:
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "webhook_endpoint_not_found"
    assert (await other_client.get(BASE)).json()["items"] == []
    # The owner still has it, with its single delivery.
    assert (await client.get(url)).status_code == 200
    assert len((await client.get(f"{url}/deliveries")).json()["items"]) == 1


async def test_unknown_endpoint_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["code"] == "webhook_endpoint_not_found"


async def test_routes_need_an_api_key(anon_client: httpx.AsyncClient) -> None:
    for response in [
        await anon_client.get(BASE),
        await anon_client.post(BASE, json={"url": "https://hooks.example.com/x", "events": EVENTS}),
        await anon_client.get(f"{BASE}/{uuid.uuid4()}"),
        await anon_client.post(f"{BASE}/{uuid.uuid4()}/test"),
    ]:
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


def test_routes_document_their_problems(app: FastAPI) -> None:
    doc = app.openapi()
    create_op = doc["paths"][BASE]["post"]
    assert {"201", "401", "409", "422"} <= set(create_op["responses"])
    assert "webhook_endpoint_limit_reached" in create_op["responses"]["409"]["description"]
    get_op = doc["paths"][f"{BASE}/{{endpoint_id}}"]["get"]
    assert "webhook_endpoint_not_found" in get_op["responses"]["404"]["description"]
    test_op = doc["paths"][f"{BASE}/{{endpoint_id}}/test"]["post"]
    assert {"202", "404", "409"} <= set(test_op["responses"])
    for path, item in doc["paths"].items():
        if path.startswith(BASE):
            for operation in item.values():
                assert operation.get("description"), path
