"""Keeping a training's result: copy the LoRA files from fal's CDN into our storage.

fal's output URLs expire by account policy, so a completed LoRA training is copied right
away (streamed and size-checked, memory stays flat), and generation uses our copy.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars.service import get_avatar
from avatar_api.db import session_scope, utcnow
from avatar_api.errors import Conflict
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import AvatarStatus, Training, TrainingStatus
from avatar_api.services import Services
from avatar_api.storage.base import ObjectStorage, StoredObject
from avatar_api.storage_keys import result_key
from avatar_api.training import repository
from avatar_api.training.schemas import LoraDownload

logger = logging.getLogger("avatar_api.training")

COPY_RESULT_JOB = "training.copy_result"
LORA_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "config.json"


class LoraNotAvailable(Conflict):
    code = "lora_not_available"
    title = "The avatar has no LoRA file"


class LoraNotReady(Conflict):
    code = "lora_not_ready"
    title = "The LoRA file is still being copied"


class ResultTooLarge(PermanentJobError):
    pass


async def mirror(
    http: httpx.AsyncClient,
    storage: ObjectStorage,
    *,
    url: str,
    key: str,
    content_type: str,
    max_bytes: int,
    expected_size: int | None = None,
) -> StoredObject:
    """Stream ``url`` into storage under ``key``; never more than ``max_bytes``."""
    async with http.stream("GET", url, follow_redirects=True, timeout=120.0) as response:
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryableJobError(f"result download answered {response.status_code}")
        if response.status_code != 200:
            raise PermanentJobError(f"result download answered {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ResultTooLarge(f"result is {declared} bytes; the limit is {max_bytes}")

        async def capped() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in response.aiter_bytes():
                seen += len(chunk)
                if seen > max_bytes:
                    raise ResultTooLarge(f"result exceeds the {max_bytes} bytes limit")
                yield chunk

        stored = await storage.put_stream(key, capped(), content_type=content_type)
    if expected_size is not None and stored.size != expected_size:
        await storage.delete(key)
        raise RetryableJobError(f"result is {stored.size} bytes, fal announced {expected_size}")
    return stored


async def copy_result(ctx: JobContext) -> None:
    services = ctx.services
    training_id = uuid.UUID(str(ctx.job.payload["training_id"]))
    async with session_scope(services.sessionmaker) as session:
        training = await session.get(Training, training_id)
    if training is None or training.lora_url is None or training.result_copied_at is not None:
        return
    max_bytes = services.settings.result_max_bytes
    lora_key = result_key(training.tenant_id, training.avatar_id, training.id, LORA_NAME)
    try:
        await mirror(
            services.http,
            services.storage,
            url=training.lora_url,
            key=lora_key,
            content_type="application/octet-stream",
            max_bytes=max_bytes,
            expected_size=training.lora_size,
        )
        config_key = None
        if training.config_url:
            config_key = result_key(
                training.tenant_id, training.avatar_id, training.id, CONFIG_NAME
            )
            await mirror(
                services.http,
                services.storage,
                url=training.config_url,
                key=config_key,
                content_type="application/json",
                max_bytes=16 * 1024 * 1024,
            )
    except httpx.HTTPError as exc:
        raise RetryableJobError(f"result download failed: {exc}") from exc
    async with session_scope(services.sessionmaker) as session:
        row = await session.get(Training, training_id, with_for_update={"key_share": True})
        if row is None:  # the avatar was deleted meanwhile: drop what we just copied
            await services.storage.delete(lora_key)
            if config_key:
                await services.storage.delete(config_key)
            return
        row.lora_key, row.config_key, row.result_copied_at = lora_key, config_key, utcnow()
        session.add(row)
    logger.info("training.result_copied", extra={"training_id": str(training_id)})


async def lora_download(
    session: AsyncSession, *, services: Services, principal: Principal, avatar_id: uuid.UUID
) -> LoraDownload:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    training = await repository.latest_for_avatar(session, avatar_id=avatar.id)
    if (
        avatar.status is not AvatarStatus.completed
        or training is None
        or training.status is not TrainingStatus.completed
    ):
        raise LoraNotAvailable("The avatar has no completed training.")
    if training.finetune_id is not None:
        raise LoraNotAvailable(
            "This avatar was trained as a fal finetune; it has no file, only a finetune id."
        )
    if training.result_copy_error is not None:
        raise LoraNotAvailable(
            f"The LoRA file could not be copied from fal: {training.result_copy_error}"
        )
    if training.lora_key is None:
        raise LoraNotReady("The LoRA file is being copied into storage; retry in a moment.")
    ttl = services.settings.download_url_ttl_seconds
    head = await services.storage.head(training.lora_key)
    return LoraDownload(
        training_id=training.id,
        download_url=await services.storage.download_url(
            training.lora_key, expires_in=ttl, filename=f"{avatar.trigger_phrase}.safetensors"
        ),
        expires_at=services.clock() + timedelta(seconds=ttl),
        size_bytes=head.size if head else training.lora_size,
        trigger_phrase=avatar.trigger_phrase,
    )


async def copy_gave_up(ctx: JobContext, reason: str) -> None:
    # Visible instead of "retry in a moment" forever; generation falls back to fal's URL.
    training = await ctx.session.get(Training, uuid.UUID(str(ctx.job.payload["training_id"])))
    if training is not None and training.lora_key is None:
        training.result_copy_error = reason[:2000]
        ctx.session.add(training)
    logger.error("training.result_copy_failed", extra={"reason": reason})


RESULT_JOB_KINDS = [JobKind(name=COPY_RESULT_JOB, handler=copy_result, on_give_up=copy_gave_up)]
