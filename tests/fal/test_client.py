"""FalClientGateway driving the real fal-client, with fal stubbed at the HTTP level."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fal_client import client as fal_internals
from pytest_httpx import HTTPXMock

from avatar_api.fal.client import FalClientGateway, describe_fal_detail
from avatar_api.fal.gateway import (
    CancelOutcome,
    FalCredentialsMissing,
    FalPermanentError,
    FalRetriableError,
    FalState,
    FalStatus,
    FalSubmitAmbiguous,
    Submission,
    TrainerGateway,
)

KEY = "key-id:key-secret"
QUEUE = "https://queue.fal.run"
BACKUP_QUEUE = "https://queue.falrun.com"
PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
WEBHOOK = "https://api.example.com/v1/webhooks/fal/trn_1?token=s3cr3t"
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
REQUEST_URL = f"{QUEUE}/{PORTRAIT}/requests/{REQUEST_ID}"

# fal-client's retry loop makes this many attempts before giving up.
FAL_CLIENT_ATTEMPTS = fal_internals.MAX_ATTEMPTS


def submit_reply(request_id: str = REQUEST_ID) -> dict[str, object]:
    base = f"{QUEUE}/{PORTRAIT}/requests/{request_id}"
    return {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "queue_position": 0,
    }


@pytest.fixture(autouse=True)
def _no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # fal-client backs off up to ~30 s between its 10 attempts; the attempts still happen.
    monkeypatch.setattr(fal_internals, "_get_retry_delay", lambda *args, **kwargs: 0.0)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def gateway(http: httpx.AsyncClient) -> AsyncIterator[FalClientGateway]:
    gateway = FalClientGateway(KEY, http_client=http, timeout=5.0)
    yield gateway
    await gateway.aclose()


def test_gateway_satisfies_the_port(gateway: FalClientGateway) -> None:
    port: TrainerGateway = gateway
    assert port is gateway


# --- submit ---


async def test_submit_sends_webhook_as_query_and_no_store_header(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=f"{QUEUE}/{PORTRAIT}?fal_webhook={WEBHOOK}",
        json=submit_reply(),
    )
    arguments = {"images_data_url": "https://files.example.com/a.zip", "steps": 1000}

    submission = await gateway.submit(PORTRAIT, arguments, webhook_url=WEBHOOK)

    assert submission == Submission(request_id=REQUEST_ID)
    request = httpx_mock.get_request()
    assert request is not None
    assert request.url.query == (
        b"fal_webhook=https%3A%2F%2Fapi.example.com%2Fv1%2Fwebhooks%2Ffal%2Ftrn_1%3Ftoken%3Ds3cr3t"
    )
    assert request.headers["X-Fal-Store-IO"] == "0"
    assert request.headers["Authorization"] == f"Key {KEY}"
    assert json.loads(request.content) == arguments


async def test_submit_with_store_io_and_without_webhook(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="POST", url=f"{QUEUE}/{PORTRAIT}", json=submit_reply())

    await gateway.submit(PORTRAIT, {"steps": 1}, webhook_url=None, store_io=True)

    request = httpx_mock.get_request()
    assert request is not None
    assert request.url.query == b""
    assert "X-Fal-Store-IO" not in request.headers


async def test_submit_keeps_the_endpoint_sub_path(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="POST", url=f"{QUEUE}/fal-ai/flux-pro/v1.1-ultra-finetuned", json=submit_reply()
    )

    await gateway.submit("fal-ai/flux-pro/v1.1-ultra-finetuned", {}, webhook_url=None)


async def test_submit_422_is_permanent_with_a_readable_message(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        status_code=422,
        json={
            "detail": [
                {
                    "loc": ["body", "images_data_url"],
                    "msg": "field required",
                    "type": "value_error.missing",
                },
                {"loc": ["body", "steps"], "msg": "must be <= 10000", "type": "value_error"},
            ]
        },
    )

    with pytest.raises(FalPermanentError) as caught:
        await gateway.submit(PORTRAIT, {}, webhook_url=None)

    assert caught.value.status_code == 422
    assert caught.value.message == (
        "fal answered 422: images_data_url: field required; steps: must be <= 10000"
    )
    assert not isinstance(caught.value, FalRetriableError)


async def test_submit_read_timeout_is_ambiguous_and_never_resent(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    # fal-client would resend this up to 10 times, each one a potential billed job.
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"), method="POST")

    with pytest.raises(FalSubmitAmbiguous):
        await gateway.submit(PORTRAIT, {}, webhook_url=WEBHOOK)

    assert len(httpx_mock.get_requests()) == 1


async def test_submit_connection_reset_after_sending_is_ambiguous(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.RemoteProtocolError("peer closed connection"))

    with pytest.raises(FalSubmitAmbiguous):
        await gateway.submit(PORTRAIT, {}, webhook_url=None)


async def test_submit_connect_error_is_retriable_not_ambiguous(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)

    with pytest.raises(FalRetriableError) as caught:
        await gateway.submit(PORTRAIT, {}, webhook_url=None)

    assert not isinstance(caught.value, FalSubmitAmbiguous)
    # fal-client's transport falls back to its backup domain once when connecting fails.
    hosts = [request.url.host for request in httpx_mock.get_requests()]
    assert hosts == ["queue.fal.run", "queue.falrun.com"]


async def test_submit_429_is_retriable_and_sent_once(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(status_code=429, json={"detail": "Too many requests"})

    with pytest.raises(FalRetriableError) as caught:
        await gateway.submit(PORTRAIT, {}, webhook_url=None)

    assert not isinstance(caught.value, FalSubmitAmbiguous)
    assert caught.value.status_code == 429
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("status_code", [500, 502, 503, 504])
async def test_submit_5xx_is_ambiguous(
    gateway: FalClientGateway, httpx_mock: HTTPXMock, status_code: int
) -> None:
    httpx_mock.add_response(status_code=status_code, text="upstream error")

    with pytest.raises(FalSubmitAmbiguous) as caught:
        await gateway.submit(PORTRAIT, {}, webhook_url=None)

    assert caught.value.status_code == status_code
    assert len(httpx_mock.get_requests()) == 1


async def test_submit_2xx_without_request_id_is_ambiguous(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(text="<html>ok</html>")

    with pytest.raises(FalSubmitAmbiguous):
        await gateway.submit(PORTRAIT, {}, webhook_url=None)


async def test_submit_past_the_deadline_is_ambiguous(
    http: httpx.AsyncClient, httpx_mock: HTTPXMock
) -> None:
    gateway = FalClientGateway(KEY, http_client=http, timeout=0.05)

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=submit_reply())

    httpx_mock.add_callback(hang)
    try:
        with pytest.raises(FalSubmitAmbiguous):
            await gateway.submit(PORTRAIT, {}, webhook_url=None)
    finally:
        await gateway.aclose()


async def test_invalid_endpoint_is_permanent_and_sends_nothing(
    gateway: FalClientGateway,
) -> None:
    with pytest.raises(FalPermanentError, match="invalid fal endpoint"):
        await gateway.submit("not-an-endpoint", {}, webhook_url=None)


# --- status ---


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"status": "IN_QUEUE", "queue_position": 3},
            FalStatus(state=FalState.IN_QUEUE, queue_position=3),
            id="in-queue",
        ),
        pytest.param(
            {
                "status": "IN_PROGRESS",
                "logs": [
                    {"message": "step 10/1000", "level": "INFO", "timestamp": "t1"},
                    {"message": "step 20/1000", "level": "INFO", "timestamp": "t2"},
                ],
            },
            FalStatus(state=FalState.IN_PROGRESS, logs=["step 10/1000", "step 20/1000"]),
            id="in-progress",
        ),
        pytest.param(
            {
                "status": "COMPLETED",
                "logs": [{"message": "done", "level": "INFO", "timestamp": "t3"}],
                "metrics": {"inference_time": 812.5},
            },
            FalStatus(state=FalState.COMPLETED, logs=["done"]),
            id="completed",
        ),
        pytest.param(
            {
                "status": "COMPLETED",
                "logs": None,
                "metrics": {},
                "error": "Training failed: not enough faces",
                "error_type": "runner_error",
            },
            FalStatus(
                state=FalState.COMPLETED,
                error="Training failed: not enough faces",
                error_type="runner_error",
            ),
            id="completed-with-error",
        ),
    ],
)
async def test_status(
    gateway: FalClientGateway,
    httpx_mock: HTTPXMock,
    body: dict[str, object],
    expected: FalStatus,
) -> None:
    httpx_mock.add_response(method="GET", url=f"{REQUEST_URL}/status?logs=true", json=body)

    status = await gateway.status(PORTRAIT, REQUEST_ID)

    assert status == expected
    assert status.failed is (expected.error is not None)


async def test_status_drops_the_endpoint_sub_path(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{QUEUE}/fal-ai/flux-pro/requests/{REQUEST_ID}/status?logs=true",
        json={"status": "IN_QUEUE", "queue_position": 0},
    )

    status = await gateway.status("fal-ai/flux-pro/v1.1-ultra-finetuned", REQUEST_ID)

    assert status.state is FalState.IN_QUEUE


async def test_status_body_fal_client_cannot_parse_is_retriable(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(json={"status": "IN_QUEUE"})

    with pytest.raises(FalRetriableError, match="unexpected status response"):
        await gateway.status(PORTRAIT, REQUEST_ID)


async def test_status_429_is_retried_by_fal_client_then_retriable(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(status_code=429, json={"detail": "slow down"}, is_reusable=True)

    with pytest.raises(FalRetriableError) as caught:
        await gateway.status(PORTRAIT, REQUEST_ID)

    assert caught.value.status_code == 429
    assert len(httpx_mock.get_requests()) == FAL_CLIENT_ATTEMPTS


async def test_status_429_then_success(gateway: FalClientGateway, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=429)
    httpx_mock.add_response(json={"status": "IN_QUEUE", "queue_position": 1})

    status = await gateway.status(PORTRAIT, REQUEST_ID)

    assert status.queue_position == 1


async def test_status_app_level_503_is_retriable_without_fal_client_retries(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        status_code=503,
        headers={"x-fal-request-id": REQUEST_ID},
        json={"detail": "Service unavailable", "error_type": "runner_unavailable"},
    )

    with pytest.raises(FalRetriableError) as caught:
        await gateway.status(PORTRAIT, REQUEST_ID)

    assert caught.value.status_code == 503
    assert caught.value.error_type == "runner_unavailable"
    assert len(httpx_mock.get_requests()) == 1


async def test_status_ingress_502_is_retried_by_fal_client_then_retriable(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        status_code=502, text="<html><center>nginx</center></html>", is_reusable=True
    )

    with pytest.raises(FalRetriableError) as caught:
        await gateway.status(PORTRAIT, REQUEST_ID)

    assert caught.value.status_code == 502
    assert len(httpx_mock.get_requests()) == FAL_CLIENT_ATTEMPTS


async def test_status_past_the_deadline_is_retriable(
    http: httpx.AsyncClient, httpx_mock: HTTPXMock
) -> None:
    gateway = FalClientGateway(KEY, http_client=http, timeout=0.05)

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"status": "IN_QUEUE", "queue_position": 0})

    httpx_mock.add_callback(hang)
    try:
        with pytest.raises(FalRetriableError):
            await gateway.status(PORTRAIT, REQUEST_ID)
    finally:
        await gateway.aclose()


async def test_status_unknown_request_is_permanent(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(status_code=404, json={"detail": "Request not found"})

    with pytest.raises(FalPermanentError) as caught:
        await gateway.status(PORTRAIT, REQUEST_ID)

    assert caught.value.status_code == 404
    assert caught.value.message == "fal answered 404: Request not found"


# --- result ---


async def test_result_is_one_get_without_polling(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    output = {
        "diffusers_lora_file": {
            "url": "https://v3.fal.media/files/lora.safetensors",
            "content_type": "application/octet-stream",
            "file_name": "lora.safetensors",
            "file_size": 89745224,
        },
        "config_file": {"url": "https://v3.fal.media/files/config.json"},
    }
    httpx_mock.add_response(method="GET", url=REQUEST_URL, json=output)

    result = await gateway.result(PORTRAIT, REQUEST_ID)

    assert result == output
    assert len(httpx_mock.get_requests()) == 1


async def test_result_of_a_failed_request_is_permanent(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=REQUEST_URL,
        status_code=422,
        json={"detail": [{"loc": ["body", "images_data_url"], "msg": "zip has 3 images"}]},
    )

    with pytest.raises(FalPermanentError, match="images_data_url: zip has 3 images"):
        await gateway.result(PORTRAIT, REQUEST_ID)


async def test_result_that_is_not_an_object_is_retriable(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=REQUEST_URL, json=["not", "an", "object"])

    with pytest.raises(FalRetriableError):
        await gateway.result(PORTRAIT, REQUEST_ID)


# --- cancel ---


@pytest.mark.parametrize(
    ("status_code", "body", "expected"),
    [
        (202, {"status": "CANCELLATION_REQUESTED"}, CancelOutcome.CANCELLATION_REQUESTED),
        (200, {"status": "OK"}, CancelOutcome.CANCELLATION_REQUESTED),
        (200, {"success": True}, CancelOutcome.CANCELLATION_REQUESTED),
        (200, None, CancelOutcome.CANCELLATION_REQUESTED),
        (400, {"status": "ALREADY_COMPLETED"}, CancelOutcome.ALREADY_COMPLETED),
        (200, {"status": "ALREADY_COMPLETED"}, CancelOutcome.ALREADY_COMPLETED),
        (404, {"status": "NOT_FOUND"}, CancelOutcome.NOT_FOUND),
        (404, {"detail": "Not Found"}, CancelOutcome.NOT_FOUND),
    ],
)
async def test_cancel(
    gateway: FalClientGateway,
    httpx_mock: HTTPXMock,
    status_code: int,
    body: dict[str, object] | None,
    expected: CancelOutcome,
) -> None:
    if body is None:
        httpx_mock.add_response(method="PUT", url=f"{REQUEST_URL}/cancel", status_code=200)
    else:
        httpx_mock.add_response(
            method="PUT", url=f"{REQUEST_URL}/cancel", status_code=status_code, json=body
        )

    assert await gateway.cancel(PORTRAIT, REQUEST_ID) is expected


async def test_cancel_400_for_another_reason_is_permanent(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="PUT", status_code=400, json={"detail": "bad request id"})

    with pytest.raises(FalPermanentError, match="bad request id"):
        await gateway.cancel(PORTRAIT, REQUEST_ID)


async def test_cancel_drops_the_endpoint_sub_path(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="PUT",
        url=f"{QUEUE}/fal-ai/flux-pro/requests/{REQUEST_ID}/cancel",
        json={"status": "CANCELLATION_REQUESTED"},
    )

    outcome = await gateway.cancel("fal-ai/flux-pro/v1.1-ultra-finetuned", REQUEST_ID)

    assert outcome is CancelOutcome.CANCELLATION_REQUESTED


# --- delete_payloads ---

PAYLOADS_URL = f"https://api.fal.ai/v1/models/requests/{REQUEST_ID}/payloads"


async def test_delete_payloads(gateway: FalClientGateway, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="DELETE", url=PAYLOADS_URL, status_code=200, json={})

    assert await gateway.delete_payloads(REQUEST_ID) is True

    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Authorization"] == f"Key {KEY}"


async def test_delete_payloads_already_gone(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="DELETE", url=PAYLOADS_URL, status_code=404)

    assert await gateway.delete_payloads(REQUEST_ID) is False


async def test_delete_payloads_without_admin_scope_is_permanent(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="DELETE", url=PAYLOADS_URL, status_code=403, json={"detail": "admin key required"}
    )

    with pytest.raises(FalPermanentError, match="admin key required") as caught:
        await gateway.delete_payloads(REQUEST_ID)

    assert caught.value.status_code == 403


async def test_delete_payloads_server_error_is_retriable(
    gateway: FalClientGateway, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="DELETE", url=PAYLOADS_URL, status_code=500, text="oops")

    with pytest.raises(FalRetriableError):
        await gateway.delete_payloads(REQUEST_ID)


async def test_delete_payloads_uses_the_configured_base_url(
    http: httpx.AsyncClient, httpx_mock: HTTPXMock
) -> None:
    gateway = FalClientGateway(
        KEY, http_client=http, timeout=5.0, rest_base_url="https://fal-proxy.internal/"
    )
    httpx_mock.add_response(
        method="DELETE",
        url=f"https://fal-proxy.internal/v1/models/requests/{REQUEST_ID}/payloads",
    )

    assert await gateway.delete_payloads(REQUEST_ID) is True


# --- credentials, logging, messages ---

GatewayCall = Callable[[FalClientGateway], Awaitable[object]]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda g: g.submit(PORTRAIT, {}, webhook_url=None), id="submit"),
        pytest.param(lambda g: g.status(PORTRAIT, REQUEST_ID), id="status"),
        pytest.param(lambda g: g.result(PORTRAIT, REQUEST_ID), id="result"),
        pytest.param(lambda g: g.cancel(PORTRAIT, REQUEST_ID), id="cancel"),
        pytest.param(lambda g: g.delete_payloads(REQUEST_ID), id="delete_payloads"),
    ],
)
@pytest.mark.parametrize("key", [None, "", "   "])
async def test_missing_key_fails_before_any_request(
    http: httpx.AsyncClient,
    httpx_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
    call: GatewayCall,
    key: str | None,
) -> None:
    # fal-client would fall back to this variable; the gateway must not.
    monkeypatch.setenv("FAL_KEY", "ambient:key")
    gateway = FalClientGateway(key, http_client=http, timeout=5.0)

    with pytest.raises(FalCredentialsMissing):
        await call(gateway)

    assert httpx_mock.get_requests() == []


async def test_calls_are_logged_without_the_key(
    gateway: FalClientGateway, httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture
) -> None:
    httpx_mock.add_response(method="POST", json=submit_reply())
    httpx_mock.add_response(method="GET", status_code=422, json={"detail": "bad input"})
    caplog.set_level(logging.DEBUG)

    await gateway.submit(PORTRAIT, {}, webhook_url=WEBHOOK)
    with pytest.raises(FalPermanentError):
        await gateway.status(PORTRAIT, REQUEST_ID)

    records = [r for r in caplog.records if r.name == "avatar_api.fal"]
    assert [(r.getMessage(), r.levelno) for r in records] == [
        ("fal.submit", logging.INFO),
        ("fal.status", logging.WARNING),
    ]
    submitted, failed = records
    assert submitted.__dict__["endpoint"] == PORTRAIT
    assert submitted.__dict__["request_id"] == REQUEST_ID
    assert submitted.__dict__["outcome"] == "submitted"
    assert isinstance(submitted.__dict__["duration_ms"], float)
    assert failed.__dict__["outcome"] == "permanent_error"
    assert failed.__dict__["status_code"] == 422
    for record in caplog.records:
        assert "key-secret" not in repr(record.__dict__)
    assert "key-secret" not in repr(gateway)


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("Request not found", "Request not found"),
        (
            [{"loc": ["body", "loras", 0, "path"], "msg": "invalid url", "type": "x"}],
            "loras[0].path: invalid url",
        ),
        ([{"loc": [], "msg": "too many images"}], "too many images"),
        ([{"unexpected": True}], '{"unexpected": true}'),
        ("x" * 2000, "x" * 497 + "..."),
    ],
)
def test_describe_fal_detail(detail: object, expected: str) -> None:
    assert describe_fal_detail(detail) == expected
