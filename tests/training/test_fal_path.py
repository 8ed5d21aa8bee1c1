"""A training driven through the real fal path: FalClientGateway and the real fal-client.

fal is stubbed at the HTTP level (pytest-httpx), so fal-client's own code builds, sends
and parses every queue call. Everything else is real and committed (tests/live.py): the
API, the job engine, the reconciler, the webhook receiver and local storage. Jobs are run
one kind at a time with ``Worker.run_once`` so each step can be inspected, except in the
first test, where the background worker and reconciler run the whole way on their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fal_client import client as fal_internals
from pytest_httpx import HTTPXMock
from sqlalchemy import update
from sqlmodel import col, select

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.client import FalClientGateway
from avatar_api.fal.webhook_signature import FalWebhookSigner, FalWebhookVerifier
from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.registry import JobRegistry
from avatar_api.jobs.worker import Worker
from avatar_api.models import Job, JobStatus
from avatar_api.settings import Settings
from avatar_api.training.reconciler import reconcile_once
from avatar_api.training.service import CANCEL_REMOTE_JOB, SUBMIT_JOB
from avatar_api.training.tasks import APPLY_EVENT_JOB, POLL_JOB
from avatar_api.training.tokens import webhook_url
from tests.conftest import make_settings
from tests.live import LiveStack, json_of, live_stack
from tests.photos.portraits import portrait_jpegs

KEY = "id:secret"
PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
QUEUE_HOSTS = ("queue.fal.run", "queue.falrun.com")
SUBMIT_URL = f"https://queue.fal.run/{PORTRAIT}"
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
REQUEST_URL = f"https://queue.fal.run/{PORTRAIT}/requests/{REQUEST_ID}"
JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
FAL_USER = "fal-user-4f1c"
LORA_URL = "https://v3.fal.media/files/rabbit/abc_pytorch_lora_weights.safetensors"
CONFIG_URL = "https://v3.fal.media/files/rabbit/abc_config.json"
LORA_BYTES = b"\0" * 4096
SUBMIT_TIMEOUT = 30.0


def log(message: str) -> dict[str, str]:
    return {"message": message, "level": "INFO", "source": "user", "timestamp": "2026-11-02T10:00"}


def lora_output() -> dict[str, Any]:
    return {
        "diffusers_lora_file": {
            "url": LORA_URL,
            "content_type": "application/octet-stream",
            "file_name": "pytorch_lora_weights.safetensors",
            "file_size": len(LORA_BYTES),
        },
        "config_file": {
            "url": CONFIG_URL,
            "content_type": "application/json",
            "file_name": "config.json",
            "file_size": 2,
        },
    }


def submit_reply(request_id: str = REQUEST_ID) -> dict[str, Any]:
    base = f"https://queue.fal.run/{PORTRAIT}/requests/{request_id}"
    return {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "queue_position": 0,
    }


SubmitOutcome = Callable[[httpx.Request], httpx.Response]


class FakeFal:
    """fal as pytest-httpx serves it to fal-client: queue API, CDN files and JWKS.

    ``submits`` scripts the answers to the next POSTs (then submissions are accepted);
    ``status`` is what a status request answers now; ``down`` refuses every connection to
    the queue hosts (primary and backup), like a network outage before anything is sent.
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.submits: list[SubmitOutcome] = []
        self.accepted: list[str] = []
        self.status: dict[str, Any] | httpx.Response = {
            "status": "IN_QUEUE",
            "queue_position": 3,
        }
        self.result: dict[str, Any] | httpx.Response = lora_output()
        self.cancel_reply = httpx.Response(202, json={"status": "CANCELLATION_REQUESTED"})
        self.down = False
        self.signer = FalWebhookSigner()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = request.url
        if url.host == "rest.fal.ai" and url.path == "/.well-known/jwks.json":
            return httpx.Response(200, json=self.signer.jwks())
        if url.host == "v3.fal.media":
            return httpx.Response(200, content=LORA_BYTES if "lora" in url.path else b"{}")
        if url.host not in QUEUE_HOSTS:
            return httpx.Response(404, json={"detail": "Not found"})
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "POST" and url.path == f"/{PORTRAIT}":
            if self.submits:
                return self.submits.pop(0)(request)
            self.accepted.append(REQUEST_ID)
            return httpx.Response(200, json=submit_reply())
        prefix = f"/{PORTRAIT}/requests/{REQUEST_ID}"
        if request.method == "GET" and url.path == f"{prefix}/status":
            return _reply(self.status)
        if request.method == "GET" and url.path == prefix:
            return _reply(self.result)
        if request.method == "PUT" and url.path == f"{prefix}/cancel":
            return self.cancel_reply
        return httpx.Response(404, json={"detail": "Request not found"})

    def calls(self, method: str, path_suffix: str = "") -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if r.method == method and r.url.host in QUEUE_HOSTS and r.url.path.endswith(path_suffix)
        ]

    @property
    def posts(self) -> list[httpx.Request]:
        return self.calls("POST")


def _reply(answer: dict[str, Any] | httpx.Response) -> httpx.Response:
    return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)


def answer(status_code: int, **kwargs: Any) -> SubmitOutcome:
    return lambda request: httpx.Response(status_code, **kwargs)


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("read timed out", request=request)


@pytest.fixture(autouse=True)
def _no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # fal-client backs off up to ~30 s between its 10 attempts; the attempts still happen.
    monkeypatch.setattr(fal_internals, "_get_retry_delay", lambda *args, **kwargs: 0.0)


def fal_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_local_root": tmp_path / "storage",
        "test_mode": False,
        "fal_key": KEY,
        "fal_timeout_seconds": 5.0,
        "fal_webhook_user_id": FAL_USER,
        "training_poll_interval_seconds": 0.05,
        "training_reconcile_interval_seconds": 0.05,
        "training_submit_timeout_seconds": SUBMIT_TIMEOUT,
        "job_poll_interval_seconds": 0.05,
        # Photo checks have their own tests; here they would only cost time.
        "photo_face_check": "off",
    }
    values.update(overrides)
    return make_settings(**values)


@dataclasses.dataclass
class FalPath:
    stack: LiveStack
    fal: FakeFal
    gateway: FalClientGateway
    # How fal reaches us: no API key (archive downloads, webhooks).
    anonymous: httpx.AsyncClient

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    async def run(self, kind: str, *, once: bool = False) -> int:
        """Run the due jobs of one kind with its registered handler; how many ran."""
        worker = Worker(
            services=self.stack.app.state.services,
            registry=JobRegistry([build_registry()[kind]]),
            concurrency=1,
            lease_seconds=30,
            poll_interval=0.05,
        )
        total = 0
        for _ in range(1 if once else 20):
            ran = await worker.run_once()
            if not ran:
                break
            total += ran
        return total

    async def reconcile(self, *, later_by: float = 0.0) -> dict[str, int]:
        services = self.stack.app.state.services
        if later_by:
            services = dataclasses.replace(
                services, clock=lambda: utcnow() + timedelta(seconds=later_by)
            )
        return await reconcile_once(services)

    async def training(self, avatar_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await json_of(
            await self.stack.client.get(f"/v1/avatars/{avatar_id}/training"), 200
        )
        return data

    async def jobs(self, kind: str) -> list[Job]:
        async with self.stack.app.state.sessionmaker() as session:
            rows = await session.exec(
                select(Job).where(Job.kind == kind).order_by(col(Job.created_at))
            )
            return list(rows.all())


@pytest.fixture
async def path(database_url: str, tmp_path: Path, httpx_mock: HTTPXMock) -> AsyncIterator[FalPath]:
    fal = FakeFal()
    httpx_mock.add_callback(fal, is_reusable=True)
    settings = fal_settings(database_url, tmp_path)
    async with httpx.AsyncClient() as rest_http:
        gateway = FalClientGateway(KEY, http_client=rest_http, timeout=settings.fal_timeout_seconds)
        async with live_stack(settings, gateway=gateway) as stack, httpx.AsyncClient() as jwks_http:
            assert stack.app.state.services.gateway is gateway
            # The receiver checks fal's signatures against fal's JWKS URL (stubbed above).
            stack.app.state.fal_verifier = FalWebhookVerifier(settings.fal_jwks_url, http=jwks_http)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=stack.app), base_url=settings.public_base_url
            ) as anonymous:
                yield FalPath(stack=stack, fal=fal, gateway=gateway, anonymous=anonymous)


async def avatar_with_photos(stack: LiveStack, count: int = 10) -> tuple[str, dict[str, Any]]:
    avatar: dict[str, Any] = await json_of(
        await stack.client.post("/v1/avatars", json={"name": "Anna", "training_type": "portrait"}),
        201,
    )
    files = [("files", (f"p{i}.jpg", portrait_jpegs(24)[i], "image/jpeg")) for i in range(count)]
    uploaded = await json_of(
        await stack.client.post(f"/v1/avatars/{avatar['id']}/photos", files=files), 201
    )
    assert len(uploaded["accepted"]) == count
    avatar["photo_sha256"] = sorted(p["sha256"] for p in uploaded["accepted"])
    return avatar["id"], avatar


async def start(stack: LiveStack, avatar_id: str, preset: str = "fast") -> dict[str, Any]:
    started: dict[str, Any] = await json_of(
        await stack.client.post(f"/v1/avatars/{avatar_id}/training", json={"preset": preset}),
        202,
    )
    assert started["status"] == "queued"
    assert started["test_mode"] is False
    return started


async def started_training(path: FalPath) -> tuple[str, dict[str, Any]]:
    avatar_id, _ = await avatar_with_photos(path.stack)
    return avatar_id, await start(path.stack, avatar_id)


async def submitted_training(path: FalPath) -> tuple[str, dict[str, Any]]:
    avatar_id, _ = await started_training(path)
    assert await path.run(SUBMIT_JOB) == 1
    training = await path.training(avatar_id)
    assert training["status"] == "in_queue", training
    assert training["request_id"] == REQUEST_ID
    return avatar_id, training


# --- the whole way, with the background worker and reconciler --------------------------------


async def test_submit_poll_and_complete_through_fal_client(path: FalPath) -> None:
    stack, fal = path.stack, path.fal
    avatar_id, avatar = await avatar_with_photos(stack)
    started = await start(stack, avatar_id)
    stack.start_worker()

    async def queued_at_fal() -> bool:
        training = await path.training(avatar_id)
        return bool(training["status"] == "in_queue" and training["queue_position"] == 3)

    await stack.wait_for(queued_at_fal, seconds=15)

    # One POST, shaped as fal expects it.
    (submit,) = fal.posts
    assert submit.url.host == "queue.fal.run"
    assert submit.url.path == f"/{PORTRAIT}"
    assert submit.url.params["fal_webhook"] == webhook_url(path.settings, uuid.UUID(started["id"]))
    assert submit.headers["Authorization"] == f"Key {KEY}"
    assert submit.headers["X-Fal-Store-IO"] == "0"
    sent = json.loads(submit.content)
    assert sent["trigger_phrase"] == avatar["trigger_phrase"]
    assert sent["steps"] == 300  # the "fast" preset
    assert sent["learning_rate"] == path.settings.fal_fast_portrait_lr
    assert re.match(r"^https?://", sent["images_data_url"])
    assert sent["images_data_url"].startswith(f"{path.settings.public_base_url}/v1/files/")
    # The archive URL works and holds exactly the avatar's photos.
    archive = await path.anonymous.get(sent["images_data_url"])
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        names = zf.namelist()
        digests = sorted(hashlib.sha256(zf.read(name)).hexdigest() for name in names)
    assert len(names) == 10
    assert digests == avatar["photo_sha256"]
    training = await path.training(avatar_id)
    assert training["request_id"] == REQUEST_ID
    assert training["submitted_at"] is not None
    assert training["fal_input"]["images_data_url"].startswith("<archive tenants/")

    # The reconciler polls; fal-client parses the logs; progress follows them.
    fal.status = {"status": "IN_PROGRESS", "logs": [log("Preparing"), log("step 150/300")]}

    async def halfway() -> bool:
        return bool((await path.training(avatar_id))["progress"]["steps_done"] == 150)

    await stack.wait_for(halfway, seconds=15)
    training = await path.training(avatar_id)
    assert training["status"] == "in_progress"
    assert training["progress"] == {"steps_done": 150, "steps_total": 300, "percent": 50.0}
    assert "step 150/300" in training["logs"]
    assert training["queue_position"] is None
    assert (await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}"), 200))[
        "status"
    ] == "training"

    fal.status = {
        "status": "COMPLETED",
        "logs": [log("step 300/300")],
        "metrics": {"inference_time": 812.5},
    }

    async def finished() -> bool:
        return bool((await path.training(avatar_id))["status"] in ("completed", "failed"))

    await stack.wait_for(finished, seconds=15)
    done = await path.training(avatar_id)
    assert done["status"] == "completed", done
    assert done["error_code"] is None
    assert done["result"]["kind"] == "lora"
    assert done["result"]["lora_url"] == LORA_URL
    assert done["result"]["lora_size"] == len(LORA_BYTES)
    assert done["result"]["config_url"] == CONFIG_URL
    assert done["progress"]["percent"] == 100.0
    assert (await json_of(await stack.client.get(f"/v1/avatars/{avatar_id}"), 200))[
        "status"
    ] == "completed"
    assert len(fal.posts) == 1
    assert fal.calls("GET", f"/requests/{REQUEST_ID}")  # the result, fetched once completed
    assert all(r.url.params.get("logs") in ("true", "1") for r in fal.calls("GET", "/status"))


# --- fal's failures ------------------------------------------------------------------------


async def test_completed_with_error_fails_the_training_with_fals_message(path: FalPath) -> None:
    avatar_id, _ = await submitted_training(path)
    fal_error = "Training failed: fewer than 10 usable faces in the archive"
    path.fal.status = {
        "status": "COMPLETED",
        "logs": [log("Loading images")],
        "metrics": {},
        "error": fal_error,
        "error_type": "runner_error",
    }

    assert (await path.reconcile())["polls"] == 1
    assert await path.run(POLL_JOB) == 1

    failed = await path.training(avatar_id)
    assert failed["status"] == "failed"
    assert failed["error_code"] == "fal_runner_error"
    assert failed["error_message"] == fal_error
    assert failed["result"] is None
    # A failed request has no result to fetch.
    assert not path.fal.calls("GET", f"/requests/{REQUEST_ID}")
    avatar = await json_of(await path.stack.client.get(f"/v1/avatars/{avatar_id}"), 200)
    assert avatar["status"] == "failed"


async def test_422_on_submit_fails_for_good_and_is_never_resubmitted(path: FalPath) -> None:
    path.fal.submits = [
        answer(
            422,
            json={
                "detail": [
                    {
                        "loc": ["body", "images_data_url"],
                        "msg": "the archive could not be downloaded",
                        "type": "value_error",
                    }
                ]
            },
        )
    ]
    avatar_id, _ = await started_training(path)

    assert await path.run(SUBMIT_JOB) == 1

    failed = await path.training(avatar_id)
    assert failed["status"] == "failed"
    assert failed["error_code"] == "fal_rejected"
    assert "images_data_url: the archive could not be downloaded" in failed["error_message"]
    assert "{" not in failed["error_message"]  # readable, not a JSON dump
    (job,) = await path.jobs(SUBMIT_JOB)
    assert job.status is JobStatus.succeeded  # nothing left to retry
    await path.reconcile(later_by=SUBMIT_TIMEOUT + 1)
    assert await path.run(SUBMIT_JOB) == 0
    assert len(path.fal.posts) == 1


@pytest.mark.parametrize(
    "gone",
    [
        # fal keeps a result about an hour (minutes when large); a late poll finds nothing.
        pytest.param("result", id="result-expired"),
        pytest.param("status", id="request-unknown"),
        # A COMPLETED status may carry only an error_type, and then there is no result.
        pytest.param("error-type-only", id="error-type-only"),
    ],
)
async def test_poll_that_fal_answers_for_good_ends_the_training(path: FalPath, gone: str) -> None:
    avatar_id, _ = await submitted_training(path)
    not_found = httpx.Response(404, json={"detail": "Request not found"})
    path.fal.status = {"status": "COMPLETED", "logs": [], "metrics": {}}
    if gone == "result":
        path.fal.result = not_found
    elif gone == "status":
        path.fal.status = not_found
    else:
        path.fal.status = {"status": "COMPLETED", "logs": [], "error_type": "runner_oom"}
        path.fal.result = httpx.Response(
            422, json={"detail": [{"msg": "Request failed", "type": "runner_oom"}]}
        )

    assert (await path.reconcile())["polls"] == 1
    assert await path.run(POLL_JOB, once=True) == 1

    failed = await path.training(avatar_id)
    assert failed["status"] == "failed", failed
    assert failed["error_code"].startswith("fal_")
    assert failed["error_message"]
    if gone != "error-type-only":
        assert "Request not found" in failed["error_message"]
    else:
        assert "runner_oom" in failed["error_message"]
    # Decided at once: no poll job left retrying what cannot change.
    (job,) = await path.jobs(POLL_JOB)
    assert job.status is JobStatus.succeeded


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(answer(500, text="upstream error"), id="500"),
        pytest.param(answer(503, text="<html>503 Service Unavailable</html>"), id="503"),
        pytest.param(read_timeout, id="read-timeout"),
    ],
)
async def test_ambiguous_submit_is_never_resent_and_ends_as_submission_lost(
    path: FalPath, outcome: SubmitOutcome
) -> None:
    path.fal.submits = [outcome]
    avatar_id, _ = await started_training(path)

    assert await path.run(SUBMIT_JOB) == 1

    pending = await path.training(avatar_id)
    assert pending["status"] == "submitting"
    assert pending["request_id"] is None
    (job,) = await path.jobs(SUBMIT_JOB)
    assert job.status is JobStatus.succeeded  # not retried: it could bill twice
    # Within the timeout the reconciler waits for the webhook.
    assert (await path.reconcile())["submission_lost"] == 0
    assert await path.run(SUBMIT_JOB) == 0
    assert (await path.training(avatar_id))["status"] == "submitting"

    assert (await path.reconcile(later_by=SUBMIT_TIMEOUT + 1))["submission_lost"] == 1

    lost = await path.training(avatar_id)
    assert lost["status"] == "failed"
    assert lost["error_code"] == "submission_lost"
    assert len(path.fal.posts) == 1
    avatar = await json_of(await path.stack.client.get(f"/v1/avatars/{avatar_id}"), 200)
    assert avatar["status"] == "failed"


async def test_ambiguous_submit_is_adopted_by_fals_signed_webhook(path: FalPath) -> None:
    # fal queued the request, but its reply was lost on the way back.
    path.fal.submits = [answer(500, text="upstream error")]
    avatar_id, started = await started_training(path)
    assert await path.run(SUBMIT_JOB) == 1
    assert (await path.training(avatar_id))["status"] == "submitting"
    (submit,) = path.fal.posts
    hook = urlsplit(submit.url.params["fal_webhook"])
    assert hook.path.startswith(f"/v1/webhooks/fal/{started['id']}/")
    body = json.dumps(
        {
            "request_id": REQUEST_ID,
            "gateway_request_id": REQUEST_ID,
            "status": "OK",
            "payload": lora_output(),
        }
    ).encode()
    headers = path.fal.signer.sign(REQUEST_ID, FAL_USER, body, int(utcnow().timestamp()))

    delivered = await path.anonymous.post(
        hook.path, content=body, headers={**headers, "Content-Type": "application/json"}
    )

    assert delivered.status_code == 200, delivered.text
    assert delivered.json() == {"status": "accepted"}
    adopted = await path.training(avatar_id)
    assert adopted["request_id"] == REQUEST_ID
    assert await path.run(APPLY_EVENT_JOB) == 1
    done = await path.training(avatar_id)
    assert done["status"] == "completed", done
    assert done["result"]["lora_url"] == LORA_URL
    # Adopted, so the reconciler has nothing to declare lost.
    assert (await path.reconcile(later_by=SUBMIT_TIMEOUT + 1))["submission_lost"] == 0
    assert (await path.training(avatar_id))["status"] == "completed"
    assert len(path.fal.posts) == 1


# --- nothing reached fal: safe to try again ------------------------------------------------------


async def _make_due(path: FalPath, kind: str) -> None:
    """Skip the job's backoff: make its retry due now."""
    async with session_scope(path.stack.app.state.sessionmaker) as session:
        await session.exec(
            update(Job)
            .where(col(Job.kind) == kind, col(Job.status) == JobStatus.pending)
            .values(run_at=utcnow() - timedelta(seconds=1))
        )


@pytest.mark.parametrize("failure", ["connect-error", "429"])
async def test_submit_that_never_reached_fal_is_retried_once_accepted(
    path: FalPath, failure: str
) -> None:
    if failure == "connect-error":
        path.fal.down = True
    else:
        path.fal.submits = [answer(429, json={"detail": "Too many requests"})]
    avatar_id, _ = await started_training(path)

    assert await path.run(SUBMIT_JOB, once=True) == 1

    requeued = await path.training(avatar_id)
    assert requeued["status"] == "queued"
    assert requeued["request_id"] is None
    (job,) = await path.jobs(SUBMIT_JOB)
    assert job.status is JobStatus.pending
    assert job.attempts == 1
    assert job.last_error is not None
    assert "fal unavailable" in job.last_error
    refused = list(path.fal.posts)
    if failure == "connect-error":
        # fal-client tried its backup domain too; neither connection was made.
        assert [r.url.host for r in refused] == list(QUEUE_HOSTS)
    else:
        assert len(refused) == 1  # one POST: fal-client's retry loop does not resend a submit
    assert path.fal.accepted == []

    path.fal.down = False
    await _make_due(path, SUBMIT_JOB)
    assert await path.run(SUBMIT_JOB) == 1

    training = await path.training(avatar_id)
    assert training["status"] == "in_queue"
    assert training["request_id"] == REQUEST_ID
    assert path.fal.accepted == [REQUEST_ID]
    assert len(path.fal.posts) == len(refused) + 1
    (job,) = await path.jobs(SUBMIT_JOB)
    assert job.status is JobStatus.succeeded
    assert job.attempts == 2


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_of_a_submitted_training_cancels_it_at_fal(path: FalPath) -> None:
    avatar_id, _ = await submitted_training(path)

    cancelled = await json_of(
        await path.stack.client.post(f"/v1/avatars/{avatar_id}/training/cancel"), 200
    )

    assert cancelled["status"] == "cancelled"
    assert await path.run(CANCEL_REMOTE_JOB) == 1
    (put,) = path.fal.calls("PUT")
    assert str(put.url) == f"{REQUEST_URL}/cancel"
    assert put.headers["Authorization"] == f"Key {KEY}"
    # fal finishing anyway changes nothing, and cancelled trainings are not polled.
    path.fal.status = {"status": "COMPLETED", "logs": [], "metrics": {}}
    assert (await path.reconcile())["polls"] == 0
    assert (await path.training(avatar_id))["status"] == "cancelled"
    (job,) = await path.jobs(CANCEL_REMOTE_JOB)
    assert job.status is JobStatus.succeeded
