"""The test-mode simulator: plays fal's queue API so the whole service runs without fal.

It behaves like fal where the service can tell: it downloads the archive from the URL it
was given and checks it like a trainer would, moves through IN_QUEUE -> IN_PROGRESS (with
step logs) -> COMPLETED, returns a real (small) .safetensors LoRA, and delivers webhooks
signed exactly like fal's (ED25519 over request id, user id, timestamp and body hash) with
its own key and JWKS. Its state lives in the database and its work runs on the job engine,
so it works across API and worker processes. It is selected only by test mode; it never
replaces fal on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import struct
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.gateway import (
    CancelOutcome,
    FalPermanentError,
    FalState,
    FalStatus,
    Submission,
)
from avatar_api.fal.webhook_signature import FalWebhookSigner
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import SimulatedRequest
from avatar_api.settings import Settings, SimulatorFailure
from avatar_api.storage.base import ObjectStorage

logger = logging.getLogger("avatar_api.fal.simulator")

SIMULATOR_USER_ID = "avatar-api-simulator"
JWKS_PATH = "/v1/simulator/jwks.json"
PROCESS_JOB = "simulator.process"
FINISH_JOB = "simulator.finish"
WEBHOOK_JOB = "simulator.webhook"
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
# What each trainer needs to accept an archive (fal's portrait trainer needs 10 images).
_MIN_IMAGES = {
    "fal-ai/flux-lora-portrait-trainer": 10,
    "fal-ai/flux-pro-trainer": 5,
    "fal-ai/flux-lora-fast-training": 4,
}
_ARCHIVE_FIELD = {
    "fal-ai/flux-lora-portrait-trainer": "images_data_url",
    "fal-ai/flux-pro-trainer": "data_url",
    "fal-ai/flux-lora-fast-training": "images_data_url",
}


def simulator_signer(settings: Settings) -> FalWebhookSigner:
    # Derived from the secret key so every process of one deployment signs alike.
    seed = hashlib.sha256(
        b"avatar-api simulator signing key\n" + settings.secret_key.get_secret_value().encode()
    ).digest()
    return FalWebhookSigner(private_key=seed)


def simulator_jwks_url(settings: Settings) -> str:
    return settings.public_base_url.rstrip("/") + JWKS_PATH


def safetensors_lora(*, rank: int = 4, width: int = 64, seed: str = "") -> bytes:
    """A real, loadable .safetensors file holding a tiny LoRA pair (A and B matrices)."""
    tensors: dict[str, tuple[list[int], bytes]] = {}
    for name, shape in (("lora_A.weight", [rank, width]), ("lora_B.weight", [width, rank])):
        count = shape[0] * shape[1]
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        values = [((digest[i % len(digest)] - 128) / 1280.0) for i in range(count)]
        tensors[f"transformer.single_transformer_blocks.0.attn.to_q.{name}"] = (
            shape,
            struct.pack(f"<{count}f", *values),
        )
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "avatar-api simulator"}}
    offset, data = 0, b""
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data on 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + data


def _check_archive(path: Path, minimum: int) -> tuple[int, str | None]:
    """How many decodable images the zip holds, and why a trainer would refuse it."""
    if not zipfile.is_zipfile(path):
        return 0, "The training archive is not a zip file."
    count = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or info.file_size > 64 * 1024 * 1024:
                continue
            try:
                with archive.open(info) as member, Image.open(io.BytesIO(member.read())) as img:
                    img.load()
                count += 1
            except Exception:  # noqa: S112  (a trainer skips what it cannot decode)
                continue
    if count < minimum:
        return count, f"The archive has {count} usable images; at least {minimum} are required."
    return count, None


class SimulatorGateway:
    """A TrainerGateway that plays fal (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._clock = clock

    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        field = _ARCHIVE_FIELD.get(endpoint)
        if field is None:
            raise FalPermanentError(f"Application '{endpoint}' not found", status_code=404)
        if not isinstance(arguments.get(field), str):
            raise FalPermanentError(f"{field}: field required", status_code=422)
        steps = arguments.get("steps") or arguments.get("iterations") or 100
        request_id = str(uuid.uuid4())
        async with session_scope(self._sessionmaker) as session:
            session.add(
                SimulatedRequest(
                    request_id=request_id,
                    endpoint=endpoint,
                    arguments=dict(arguments),
                    webhook_url=webhook_url,
                    submitted_at=self._clock(),
                    queue_seconds=self._settings.simulator_queue_seconds,
                    train_seconds=self._settings.simulator_train_seconds,
                    total_steps=int(steps) if isinstance(steps, int) else 100,
                )
            )
            await enqueue(session, kind=PROCESS_JOB, payload={"request_id": request_id})
        logger.info("simulator.submitted", extra={"request_id": request_id, "endpoint": endpoint})
        return Submission(request_id=request_id)

    async def _get(self, request_id: str) -> SimulatedRequest:
        async with session_scope(self._sessionmaker) as session:
            row = await session.get(SimulatedRequest, request_id)
        if row is None:
            raise FalPermanentError("Request not found", status_code=404)
        return row

    async def status(self, endpoint: str, request_id: str) -> FalStatus:
        row = await self._get(request_id)
        elapsed = (self._clock() - row.submitted_at).total_seconds()
        if row.cancelled_at is not None:
            return FalStatus(
                state=FalState.COMPLETED, error="Request was cancelled", error_type="cancelled"
            )
        if row.completed_at is not None:
            return FalStatus(
                state=FalState.COMPLETED,
                logs=[f"Training step {row.total_steps}/{row.total_steps}"],
                error=row.error,
                error_type="runner_error" if row.error else None,
            )
        if elapsed < row.queue_seconds:
            return FalStatus(
                state=FalState.IN_QUEUE, queue_position=math.ceil(row.queue_seconds - elapsed)
            )
        fraction = min(1.0, (elapsed - row.queue_seconds) / max(row.train_seconds, 0.001))
        done = int(fraction * row.total_steps)
        return FalStatus(
            state=FalState.IN_PROGRESS, logs=[f"Training step {done}/{row.total_steps}"]
        )

    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        row = await self._get(request_id)
        if row.completed_at is None or row.result is None:
            raise FalPermanentError("Request is not completed", status_code=400)
        return dict(row.result)

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        async with session_scope(self._sessionmaker) as session:
            row = await session.get(SimulatedRequest, request_id)
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row.completed_at is not None:
                return CancelOutcome.ALREADY_COMPLETED
            row.cancelled_at = row.cancelled_at or self._clock()
            session.add(row)
        return CancelOutcome.CANCELLATION_REQUESTED

    async def delete_payloads(self, request_id: str) -> bool:
        async with session_scope(self._sessionmaker) as session:
            row = await session.get(SimulatedRequest, request_id)
            if row is None:
                return False
            row.arguments = {}
            row.result = None
            session.add(row)
        return True


# --- the simulator's own work, run by the job engine ------------------------------------------


async def _download(http: httpx.AsyncClient, url: str, path: Path) -> None:
    async with http.stream("GET", url, timeout=60.0) as response:
        if response.status_code != 200:
            raise PermanentJobError(f"archive download answered {response.status_code}")
        size = 0
        with path.open("wb") as fh:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ARCHIVE_BYTES:
                    raise PermanentJobError("archive too large")
                fh.write(chunk)


async def process_request(ctx: JobContext) -> None:
    """Fetch and check the archive like the trainer would, then schedule the end."""
    settings = ctx.services.settings
    request_id = str(ctx.job.payload["request_id"])
    # Read in a short transaction: the download below must not hold a database lock.
    async with session_scope(ctx.services.sessionmaker) as session:
        row = await session.get(SimulatedRequest, request_id)
    if row is None:
        return
    url = row.arguments.get(_ARCHIVE_FIELD[row.endpoint])
    error: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "archive.zip"
        try:
            await _download(ctx.services.http, str(url), path)
            _, error = await asyncio.to_thread(_check_archive, path, _MIN_IMAGES[row.endpoint])
        except (httpx.HTTPError, PermanentJobError) as exc:
            error = f"Could not download the training archive: {exc}"
    if error is None and settings.simulator_failure is SimulatorFailure.trainer_error:
        error = "Simulated trainer failure (AVATAR_SIMULATOR_FAILURE=trainer_error)."
    row = await ctx.session.get(SimulatedRequest, request_id)
    if row is None:
        return
    row.error = error
    ctx.session.add(row)
    finish_at = row.submitted_at + timedelta(seconds=row.queue_seconds + row.train_seconds)
    await enqueue(
        ctx.session, kind=FINISH_JOB, payload={"request_id": row.request_id}, run_at=finish_at
    )


async def _store_result(storage: ObjectStorage, row: SimulatedRequest) -> dict[str, Any]:
    if row.endpoint == "fal-ai/flux-pro-trainer":
        return {"finetune_id": f"sim-finetune-{row.request_id}"}
    prefix = f"simulator/{row.request_id}/"
    lora = safetensors_lora(seed=row.request_id)
    config = json.dumps({"arguments": {k: v for k, v in row.arguments.items() if "url" not in k}})
    await storage.put_bytes(
        prefix + "pytorch_lora_weights.safetensors", lora, content_type="application/octet-stream"
    )
    await storage.put_bytes(
        prefix + "config.json", config.encode(), content_type="application/json"
    )
    week = 7 * 24 * 3600
    return {
        "diffusers_lora_file": {
            "url": await storage.download_url(
                prefix + "pytorch_lora_weights.safetensors", expires_in=week
            ),
            "content_type": "application/octet-stream",
            "file_name": "pytorch_lora_weights.safetensors",
            "file_size": len(lora),
        },
        "config_file": {
            "url": await storage.download_url(prefix + "config.json", expires_in=week),
            "content_type": "application/json",
            "file_name": "config.json",
            "file_size": len(config),
        },
    }


async def finish_request(ctx: JobContext) -> None:
    row = await ctx.session.get(SimulatedRequest, str(ctx.job.payload["request_id"]))
    if row is None or row.completed_at is not None or row.cancelled_at is not None:
        return
    if row.error is None:
        row.result = await _store_result(ctx.services.storage, row)
    row.completed_at = ctx.services.clock()
    ctx.session.add(row)
    failure = ctx.services.settings.simulator_failure
    if row.webhook_url is None or failure is SimulatorFailure.lost_webhook:
        return
    deliveries = 2 if failure is SimulatorFailure.duplicate_webhook else 1
    for copy in range(deliveries):
        await enqueue(
            ctx.session,
            kind=WEBHOOK_JOB,
            payload={"request_id": row.request_id, "copy": copy},
            max_attempts=10,
        )


def webhook_body(row: SimulatedRequest) -> dict[str, Any]:
    if row.error is not None:
        return {
            "request_id": row.request_id,
            "gateway_request_id": row.request_id,
            "status": "ERROR",
            "error": row.error,
            "payload": {"detail": [{"msg": row.error, "type": "runner_error"}]},
        }
    return {
        "request_id": row.request_id,
        "gateway_request_id": row.request_id,
        "status": "OK",
        "payload": row.result,
    }


async def deliver_webhook(ctx: JobContext) -> None:
    # A short read: the POST below reaches our own API, which needs the database.
    async with session_scope(ctx.services.sessionmaker) as session:
        row = await session.get(SimulatedRequest, str(ctx.job.payload["request_id"]))
    if row is None or row.webhook_url is None:
        return
    body = json.dumps(webhook_body(row)).encode()
    signer = simulator_signer(ctx.services.settings)
    headers = signer.sign(
        row.request_id, SIMULATOR_USER_ID, body, int(ctx.services.clock().timestamp())
    )
    headers["Content-Type"] = "application/json"
    try:
        response = await ctx.services.http.post(row.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise RetryableJobError(f"webhook delivery failed: {exc}") from exc
    if not response.is_success:
        raise RetryableJobError(f"webhook answered {response.status_code}")


SIMULATOR_JOB_KINDS = [
    JobKind(name=PROCESS_JOB, handler=process_request),
    JobKind(name=FINISH_JOB, handler=finish_request),
    JobKind(name=WEBHOOK_JOB, handler=deliver_webhook),
]
