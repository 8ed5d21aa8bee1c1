"""Request ids, access log lines, request context in every record, and no secret in any line."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import authenticate
from avatar_api.dependencies import PrincipalDep
from avatar_api.fal.client import FalClientGateway
from avatar_api.fal.gateway import FalPermanentError
from avatar_api.fal.webhook_signature import SIGNATURE_HEADER
from avatar_api.logging_setup import (
    REDACTED,
    ConsoleFormatter,
    JsonFormatter,
    make_handler,
    redact_text,
    register_secret_values,
)
from avatar_api.training.tokens import webhook_token
from tests.conftest import make_settings
from tests.live import json_of, live_stack
from tests.photos.portraits import portrait_jpegs

HEX_ID = re.compile(r"[0-9a-f]{32}")
ops_logger = logging.getLogger("avatar_api.ops_test")


@contextlib.contextmanager
def service_log(*, debug_everything: bool = False) -> Iterator[io.StringIO]:
    """The service's own handler (filters + JSON) on the root logger, into a buffer.

    Put first, so its in-place redaction runs before pytest's capture handler sees a record.
    """
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    root.handlers.insert(0, handler)
    root_level = root.level
    root.setLevel(logging.DEBUG)
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    if debug_everything:
        for name in chatty:
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- request ids ------------------------------------------------------------------------------


async def test_request_id_is_generated_echoed_or_replaced(client: httpx.AsyncClient) -> None:
    generated = (await client.get("/healthz")).headers["X-Request-ID"]
    assert HEX_ID.fullmatch(generated)
    assert (await client.get("/healthz")).headers["X-Request-ID"] != generated

    sane = "req-2024.06_01-ABC"
    assert (await client.get("/healthz", headers={"X-Request-ID": sane})).headers[
        "X-Request-ID"
    ] == sane
    for insane in (b"a" * 129, b"has space", b"semi;colon", "é".encode("latin-1")):
        answered = await client.get("/healthz", headers={b"X-Request-ID": insane})
        assert HEX_ID.fullmatch(answered.headers["X-Request-ID"]), insane


async def test_problem_and_routing_errors_carry_the_request_id(app: FastAPI, api_key: str) -> None:
    async def boom() -> None:
        raise RuntimeError("unexpected")

    app.add_api_route("/ops-test/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon:
        answers = {
            401: await anon.get("/v1/avatars"),
            404: await anon.get("/no/such/route"),
            405: await anon.delete("/healthz"),
            422: await anon.post(
                "/v1/avatars", json={}, headers={"Authorization": f"Bearer {api_key}"}
            ),
            500: await anon.get("/ops-test/boom", headers={"X-Request-ID": "boom-1"}),
        }
    for status, response in answers.items():
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert HEX_ID.fullmatch(response.headers["X-Request-ID"]) or status == 500
    assert answers[500].headers["X-Request-ID"] == "boom-1"


async def test_one_access_line_per_request_with_route_template(
    client: httpx.AsyncClient, api_key: str, session: AsyncSession
) -> None:
    principal = await authenticate(session, secret=api_key)
    missing = uuid.uuid4()
    with service_log() as stream:
        response = await client.get(f"/v1/avatars/{missing}")
    assert response.status_code == 404
    request_id = response.headers["X-Request-ID"]
    lines = [line for line in json_lines(stream) if line["event"] == "http.request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == request_id
    assert line["method"] == "GET"
    assert line["route"] == "/v1/avatars/{avatar_id}"  # the template, never the raw path
    assert str(missing) not in json.dumps(line)
    assert line["status"] == 404
    assert isinstance(line["duration_ms"], float)
    assert line["tenant_id"] == str(principal.tenant_id)


async def test_every_record_of_a_request_carries_its_ids(
    app: FastAPI, client: httpx.AsyncClient, api_key: str, session: AsyncSession
) -> None:
    principal = await authenticate(session, secret=api_key)

    async def noisy(principal: PrincipalDep) -> dict[str, str]:
        ops_logger.info("ops.plain_event")
        # fal's request id keeps its name; the HTTP one moves aside.
        ops_logger.info("ops.fal_event", extra={"request_id": "fal-req-1"})
        return {}

    app.add_api_route("/ops-test/noisy", noisy)
    with service_log() as stream:
        response = await client.get("/ops-test/noisy", headers={"X-Request-ID": "trace-77"})
        ops_logger.info("ops.outside_any_request")
    assert response.status_code == 200
    by_event = {line["event"]: line for line in json_lines(stream)}
    plain, fal, access = (
        by_event["ops.plain_event"],
        by_event["ops.fal_event"],
        by_event["http.request"],
    )
    assert plain["request_id"] == "trace-77"
    assert plain["tenant_id"] == str(principal.tenant_id)
    assert (fal["request_id"], fal["http_request_id"]) == ("fal-req-1", "trace-77")
    assert fal["tenant_id"] == str(principal.tenant_id)
    assert access["route"] == "/ops-test/noisy"
    outside = by_event["ops.outside_any_request"]
    assert "request_id" not in outside
    assert "tenant_id" not in outside


# --- redaction --------------------------------------------------------------------------------


def test_redaction_masks_secrets_in_messages_values_and_exceptions() -> None:
    known = "configured-secret-" + uuid.uuid4().hex
    register_secret_values(known)
    api_key = "avk_" + "A1b2" * 10
    whsec = "whsec_" + "Zz9+" * 8
    fal_key = "0f0e0d0c-aaaa-bbbb-cccc-000000000000:feedfacecafebeef0123456789"
    token = "T0k3n_" + "x" * 37
    training = uuid.uuid4()
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256))
    with service_log() as stream:
        ops_logger.info(
            "calling %s with Authorization: Key %s and Bearer %s (%s) %s",
            "fal",
            fal_key,
            api_key,
            known,
            photo,
            extra={
                "api_key": api_key,
                "headers": {SIGNATURE_HEADER: "ab" * 64, "Content-Type": "application/json"},
                "nested": [{"token": token}, {"webhook_secret": whsec}],
                "photo": photo,
                "url": "http://h/v1/files/k?expires=1&signature=s1gn4tur3&filename=a.jpg",
                "fal_url": "https://queue.fal.run/x?fal_webhook="
                f"https%3A%2F%2Fapi%2Fv1%2Fwebhooks%2Ffal%2F{training}%2F{token}",
                "database": "postgresql+asyncpg://app:hunter2pass@db:5432/app",
                "note": f"secret {whsec}",
            },
        )
        try:
            raise ValueError(f"fal said: invalid key Key {fal_key}")
        except ValueError:
            ops_logger.exception("ops.failed")
    output = stream.getvalue()
    for secret in (known, api_key, whsec, fal_key, "feedfacecafebeef0123456789", token):
        assert secret not in output
    for secret in ("ab" * 64, "s1gn4tur3", "hunter2pass", photo.hex()[:32], repr(photo)[2:40]):
        assert secret not in output
    first, failed = json_lines(stream)
    assert first["headers"] == {SIGNATURE_HEADER: REDACTED, "Content-Type": "application/json"}
    assert first["api_key"] == REDACTED
    assert first["photo"] == f"<{len(photo)} bytes>"
    assert f"<{len(photo)} bytes>" in str(first["event"])
    assert first["url"] == f"http://h/v1/files/k?expires=1&signature={REDACTED}&filename=a.jpg"
    assert str(training) in str(first["fal_url"])  # the id stays, only the token goes
    assert "Key [REDACTED]" in str(first["event"])
    assert "Key [REDACTED]" in str(failed["exception"])


def test_the_console_format_is_redacted_too() -> None:
    record = logging.LogRecord(
        "avatar_api.x", logging.INFO, __file__, 1, "key avk_%s", ("abcdefghijklmnop",), None
    )
    record.__dict__["authorization"] = "Bearer abcdefghijklmnop"
    line = ConsoleFormatter().format(record)
    assert "abcdefghijklmnop" not in line
    assert "avk_[REDACTED]" in line
    # Ordinary text that looks a little like a credential stays readable.
    plain = "Foreign Key constraint failed; Key (avatar_id)=(1) exists; dedupe key submit:1"
    assert redact_text(plain) == plain


# --- a whole flow, every line captured --------------------------------------------------------


async def test_a_full_flow_logs_no_secret(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Create, upload, register a webhook, train to completed: grep every log line."""
    fal_key = f"{uuid.uuid4()}:{uuid.uuid4().hex}{uuid.uuid4().hex}"
    secret_key = "flow-secret-key-" + uuid.uuid4().hex
    metrics_token = "metrics-token-" + uuid.uuid4().hex
    settings = make_settings(
        database_url=database_url,
        storage_local_root=tmp_path / "storage",
        simulator_queue_seconds=0.2,
        simulator_train_seconds=0.4,
        training_poll_interval_seconds=1.0,
        training_reconcile_interval_seconds=0.2,
        job_poll_interval_seconds=0.05,
        fal_key=fal_key,  # test mode stays on (AVATAR_TEST_MODE=true wins)
        secret_key=secret_key,
        metrics_token=metrics_token,
        webhook_allow_private_targets=True,
    )
    photos = portrait_jpegs(24)[:10]
    caplog.set_level(logging.DEBUG)
    sent_signatures: list[str] = []
    url_signatures: list[str] = []

    async def watch(request: httpx.Request) -> None:
        if SIGNATURE_HEADER in request.headers:
            sent_signatures.append(request.headers[SIGNATURE_HEADER])
        if "signature" in request.url.params:
            url_signatures.append(request.url.params["signature"])

    with service_log(debug_everything=True) as stream:
        async with live_stack(settings) as stack:
            stack.app.state.services.http.event_hooks["request"].append(watch)
            api_key = stack.client.headers["Authorization"].removeprefix("Bearer ")
            client = stack.client
            avatar = await json_of(
                await client.post("/v1/avatars", json={"name": "Ann", "training_type": "portrait"}),
                201,
            )
            files = [("files", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
            await json_of(await client.post(f"/v1/avatars/{avatar['id']}/photos", files=files), 201)
            webhook_secret = None
            if "/v1/webhook-endpoints" in stack.app.openapi()["paths"]:
                endpoint = await json_of(
                    await client.post(
                        "/v1/webhook-endpoints",
                        json={
                            "url": "http://127.0.0.1:9/hook",
                            "events": ["avatar.training.completed"],
                        },
                    ),
                    201,
                )
                webhook_secret = endpoint["secret"]
            training = await json_of(
                await client.post(f"/v1/avatars/{avatar['id']}/training", json={}), 202
            )
            token = webhook_token(settings, uuid.UUID(training["id"]))
            # A forged webhook with the right token but no signature: rejected, and logged.
            forged = await client.post(
                f"/v1/webhooks/fal/{training['id']}/{token}", json={"status": "OK"}
            )
            assert forged.status_code == 401
            stack.start_worker()

            async def completed() -> bool:
                current = await json_of(
                    await client.get(f"/v1/avatars/{avatar['id']}/training"), 200
                )
                assert current["status"] not in ("failed", "cancelled"), current
                return bool(current["status"] == "completed")

            await stack.wait_for(completed)
            metrics = await client.get(
                "/metrics", headers={"Authorization": f"Bearer {metrics_token}"}
            )
            assert metrics.status_code == 200
            # A real-adapter call whose error echoes the key back (as some servers do).
            async with httpx.AsyncClient(transport=httpx.MockTransport(_echo_key)) as http:
                gateway = FalClientGateway(fal_key, http_client=http, timeout=5)
                with pytest.raises(FalPermanentError):
                    await gateway.delete_payloads("req-echo")
                await gateway.aclose()

    secrets = {
        "api key": api_key,
        "fal key": fal_key,
        "fal key secret": fal_key.split(":")[1],
        "secret key": secret_key,
        "metrics token": metrics_token,
        "webhook token": token,
        **{f"fal signature {i}": value for i, value in enumerate(sent_signatures)},
        **{f"file url signature {i}": value for i, value in enumerate(url_signatures)},
    }
    if webhook_secret is not None:
        secrets["webhook secret"] = webhook_secret
        secrets["webhook secret body"] = webhook_secret.removeprefix("whsec_")
    assert sent_signatures, "the simulator delivered no signed webhook"
    assert url_signatures, "no signed file URL was fetched"

    output = stream.getvalue()
    records = caplog.records
    captured = "\n".join(
        [
            output,
            caplog.text,
            *(JsonFormatter().format(record) for record in records),
            *(ConsoleFormatter().format(record) for record in records),
        ]
    )
    lines = json_lines(stream)
    events = {line["event"] for line in lines}
    # The capture saw the flow (so the greps below mean something) ...
    assert {"http.request", "training.submitted", "fal.submit", "job.succeeded"} <= events
    assert {"fal.webhook_rejected", "fal.delete_payloads"} <= events
    outbound = [line for line in output.splitlines() if "HTTP Request" in line]
    assert any("/v1/webhooks/fal/" in line for line in outbound)
    # ... and nothing secret is in it.
    for name, value in secrets.items():
        assert value not in captured, f"the {name} appears in the logs"
    assert REDACTED in output
    for data in photos:
        for chunk in (data[1000:1024], data[-64:-40]):
            for form in (chunk.hex(), repr(chunk)[2:-1], base64.b64encode(chunk).decode()):
                assert form not in captured, "photo bytes appear in the logs"
    # The simulator logs its calls like the real adapter does.
    simulated = [
        line
        for line in lines
        if line["event"] == "fal.submit" and line["logger"] == "avatar_api.fal.simulator"
    ]
    assert len(simulated) == 1
    assert simulated[0]["backend"] == "simulator"
    assert simulated[0]["outcome"] == "submitted"
    assert simulated[0]["endpoint"] == "fal-ai/flux-lora-portrait-trainer"
    assert isinstance(simulated[0]["duration_ms"], float)


def _echo_key(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        401, json={"detail": f"Invalid credentials: {request.headers['Authorization']}"}
    )
