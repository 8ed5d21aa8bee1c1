"""The test-mode simulator: plays fal's queue API so the whole service runs without fal.

It behaves like fal where the service can tell: it downloads the archive from the URL it
was given and checks it like a trainer would, moves through IN_QUEUE -> IN_PROGRESS (with
step logs) -> COMPLETED, returns a real (small) .safetensors LoRA, and delivers webhooks
signed exactly like fal's (ED25519 over request id, user id, timestamp and body hash) with
its own key and JWKS. Its state lives in the database and its work runs on the job engine,
so it works across API and worker processes. It is selected only by test mode; it never
replaces fal on its own.

It also plays the two generation endpoints: ``fal-ai/flux-lora`` (downloads and checks the
LoRA file it is given) and ``fal-ai/flux-pro/v1.1-ultra-finetuned`` (knows only the
finetune ids it issued), and answers with real JPEG/PNG images of the requested size.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import re
import struct
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw
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
from avatar_api.fal.telemetry import observed_fal_call
from avatar_api.fal.webhook_signature import FalWebhookSigner
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import SimulatedRequest
from avatar_api.settings import Settings, SimulatorFailure
from avatar_api.storage.base import ObjectStorage
from avatar_api.trainers.base import ASPECT_RATIOS, IMAGE_SIZES, ratio_size

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
        storage: ObjectStorage | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._storage = storage
        self._clock = clock

    @observed_fal_call(logger, "fal.submit", backend="simulator")
    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        field = _ARCHIVE_FIELD.get(endpoint)
        if endpoint in GENERATION_ENDPOINTS:
            check_generation_input(endpoint, arguments)
        elif field is None:
            raise FalPermanentError(f"Application '{endpoint}' not found", status_code=404)
        elif not isinstance(arguments.get(field), str):
            raise FalPermanentError(f"{field}: field required", status_code=422)
        steps = (
            arguments.get("steps")
            or arguments.get("iterations")
            or arguments.get("num_inference_steps")
            or 100
        )
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

    @observed_fal_call(logger, "fal.status", backend="simulator")
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
                logs=[f"{_step_label(row)} {row.total_steps}/{row.total_steps}"],
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
            state=FalState.IN_PROGRESS, logs=[f"{_step_label(row)} {done}/{row.total_steps}"]
        )

    @observed_fal_call(logger, "fal.result", backend="simulator")
    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        row = await self._get(request_id)
        if row.completed_at is None or row.result is None:
            raise FalPermanentError("Request is not completed", status_code=400)
        return dict(row.result)

    @observed_fal_call(logger, "fal.cancel", backend="simulator")
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

    @observed_fal_call(logger, "fal.delete_payloads", backend="simulator")
    async def delete_payloads(self, request_id: str) -> bool:
        async with session_scope(self._sessionmaker) as session:
            row = await session.get(SimulatedRequest, request_id)
            if row is None:
                return False
            row.arguments = {}
            row.result = None
            session.add(row)
        # Like fal's CDN copies of outputs, the simulator's result files go too.
        if self._storage is not None:
            await self._storage.delete_prefix(f"simulator/{request_id}/")
        return True


# --- the simulator's own work, run by the job engine ------------------------------------------


async def _download(
    http: httpx.AsyncClient, url: str, path: Path, *, limit: int = MAX_ARCHIVE_BYTES
) -> None:
    async with http.stream("GET", url, timeout=60.0) as response:
        if response.status_code != 200:
            raise PermanentJobError(f"archive download answered {response.status_code}")
        size = 0
        handle = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise PermanentJobError("file too large")
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)


async def process_request(ctx: JobContext) -> None:
    """Fetch and check the archive like the trainer would, then schedule the end."""
    settings = ctx.services.settings
    request_id = str(ctx.job.payload["request_id"])
    # Read in a short transaction: the download below must not hold a database lock.
    async with session_scope(ctx.services.sessionmaker) as session:
        row = await session.get(SimulatedRequest, request_id)
    if row is None:
        return
    error: str | None = None
    if row.endpoint in GENERATION_ENDPOINTS:
        error = await _check_generation_files(ctx.services.http, row)
    else:
        url = row.arguments.get(_ARCHIVE_FIELD[row.endpoint])
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
    if row.endpoint in GENERATION_ENDPOINTS:
        return await _store_images(storage, row)
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


# --- generation endpoints --------------------------------------------------------------------

FLUX_LORA = "fal-ai/flux-lora"
FLUX_PRO_FINETUNED = "fal-ai/flux-pro/v1.1-ultra-finetuned"
GENERATION_ENDPOINTS = frozenset({FLUX_LORA, FLUX_PRO_FINETUNED})
MAX_LORA_BYTES = 2 * 1024 * 1024 * 1024
_SIM_FINETUNE_ID = re.compile(
    r"sim-finetune-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_OUTPUT_FORMATS = {"jpeg": ("JPEG", "image/jpeg", "jpg"), "png": ("PNG", "image/png", "png")}


def _step_label(row: SimulatedRequest) -> str:
    return "Generating, step" if row.endpoint in GENERATION_ENDPOINTS else "Training step"


def _invalid(field: str, message: str) -> FalPermanentError:
    return FalPermanentError(f"{field}: {message}", status_code=422)


def _number_in(arguments: Mapping[str, object], name: str, low: float, high: float) -> None:
    value = arguments.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(name, f"must be a number between {low} and {high}")


def check_generation_input(endpoint: str, arguments: Mapping[str, object]) -> None:
    """Refuse what fal's generation endpoints refuse (a 422 at submit)."""
    prompt = arguments.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("prompt", "field required")
    num_images = arguments.get("num_images", 1)
    if not isinstance(num_images, int) or not 1 <= num_images <= 4:
        raise _invalid("num_images", "must be between 1 and 4")
    if arguments.get("output_format", "jpeg") not in _OUTPUT_FORMATS:
        raise _invalid("output_format", "must be jpeg or png")
    _number_in(arguments, "seed", 0, 2**32 - 1)
    if endpoint == FLUX_LORA:
        loras = arguments.get("loras")
        if not isinstance(loras, list) or not loras:
            raise _invalid("loras", "at least one LoRA is required")
        for index, lora in enumerate(loras):
            if not isinstance(lora, Mapping) or not isinstance(lora.get("path"), str):
                raise _invalid(f"loras[{index}].path", "field required")
            _number_in(lora, "scale", 0, 4)
        size = arguments.get("image_size", "landscape_4_3")
        if isinstance(size, Mapping):
            for side in ("width", "height"):
                if not isinstance(size.get(side), int) or not 64 <= size[side] <= 14142:
                    raise _invalid(f"image_size.{side}", "must be between 64 and 14142")
        elif size not in IMAGE_SIZES:
            raise _invalid("image_size", f"unknown size {size!r}")
        _number_in(arguments, "num_inference_steps", 1, 50)
        _number_in(arguments, "guidance_scale", 0, 35)
    else:
        finetune_id = arguments.get("finetune_id")
        if not isinstance(finetune_id, str) or not _SIM_FINETUNE_ID.fullmatch(finetune_id):
            raise _invalid("finetune_id", "unknown finetune")
        if "finetune_strength" not in arguments:
            raise _invalid("finetune_strength", "field required")
        _number_in(arguments, "finetune_strength", 0, 2)
        if arguments.get("aspect_ratio", "16:9") not in ASPECT_RATIOS:
            raise _invalid("aspect_ratio", "unknown aspect ratio")


def check_safetensors(path: Path) -> str | None:
    """Why ``path`` is not a loadable .safetensors file, or ``None`` when it is."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "The LoRA file is not a safetensors file (too short)."
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 * 1024 * 1024):
            return "The LoRA file is not a safetensors file (bad header length)."
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return "The LoRA file is not a safetensors file (unreadable header)."
    if not isinstance(header, dict):
        return "The LoRA file is not a safetensors file (header is not an object)."
    data_size = size - 8 - length
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    if not tensors:
        return "The LoRA file holds no tensors."
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            return f"The LoRA file's tensor {name!r} lies outside the file."
    return None


async def _check_generation_files(http: httpx.AsyncClient, row: SimulatedRequest) -> str | None:
    """flux-lora downloads the LoRA file it was given; a bad one fails the request."""
    if row.endpoint != FLUX_LORA:
        return None
    loras = row.arguments.get("loras") or []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        for lora in loras:
            try:
                await _download(http, str(lora["path"]), path, limit=MAX_LORA_BYTES)
            except (httpx.HTTPError, PermanentJobError) as exc:
                return f"Could not download the LoRA file: {exc}"
            error = await asyncio.to_thread(check_safetensors, path)
            if error is not None:
                return error
    return None


def _image_sizes(row: SimulatedRequest) -> tuple[int, int]:
    if row.endpoint == FLUX_LORA:
        size = row.arguments.get("image_size", "landscape_4_3")
        if isinstance(size, Mapping):
            return int(size["width"]), int(size["height"])
        return IMAGE_SIZES[str(size)]
    # FLUX ultra renders about 4 MP; the simulator keeps to about 1 MP at the same ratio.
    return ratio_size(str(row.arguments.get("aspect_ratio", "16:9")))


def render_image(width: int, height: int, *, seed: int, index: int, output_format: str) -> bytes:
    """A real, decodable image: a two-colour gradient chosen by the seed, with the seed on it."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    start, end = tuple(digest[0:3]), tuple(digest[3:6])
    mask = Image.linear_gradient("L")
    if digest[6] & 1:
        mask = mask.transpose(Image.Transpose.ROTATE_90)
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    image = Image.composite(
        Image.new("RGB", (width, height), start), Image.new("RGB", (width, height), end), mask
    )
    ImageDraw.Draw(image).text((16, 16), f"simulator seed {seed} image {index}", fill=(0, 0, 0))
    buffer = io.BytesIO()
    pil_format = _OUTPUT_FORMATS[output_format][0]
    image.save(buffer, format=pil_format, **({"quality": 85} if pil_format == "JPEG" else {}))
    return buffer.getvalue()


async def _store_images(storage: ObjectStorage, row: SimulatedRequest) -> dict[str, Any]:
    arguments = row.arguments
    seed = arguments.get("seed")
    if not isinstance(seed, int):
        seed = int.from_bytes(hashlib.sha256(row.request_id.encode()).digest()[:4], "big")
    output_format = str(arguments.get("output_format", "jpeg"))
    _, content_type, ext = _OUTPUT_FORMATS[output_format]
    width, height = _image_sizes(row)
    count = int(arguments.get("num_images", 1))
    images = []
    for index in range(count):
        data = await asyncio.to_thread(
            render_image, width, height, seed=seed, index=index, output_format=output_format
        )
        key = f"simulator/{row.request_id}/image_{index}.{ext}"
        await storage.put_bytes(key, data, content_type=content_type)
        images.append(
            {
                "url": await storage.download_url(key, expires_in=7 * 24 * 3600),
                "width": width,
                "height": height,
                "content_type": content_type,
            }
        )
    return {
        "images": images,
        "seed": seed,
        "has_nsfw_concepts": [False] * count,
        "prompt": arguments.get("prompt"),
        "timings": {"inference": row.train_seconds},
    }


SIMULATOR_JOB_KINDS = [
    JobKind(name=PROCESS_JOB, handler=process_request),
    JobKind(name=FINISH_JOB, handler=finish_request),
    JobKind(name=WEBHOOK_JOB, handler=deliver_webhook),
]
