"""Generation use cases behind the API: create, read, list, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars.service import get_avatar
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.generations import repository
from avatar_api.generations.errors import (
    AvatarNotTrained,
    GenerationNotCancellable,
    GenerationNotFound,
)
from avatar_api.generations.schemas import (
    GeneratedImage,
    GenerationCreate,
    GenerationPage,
    GenerationRead,
)
from avatar_api.generations.state import TERMINAL, set_generation_status
from avatar_api.jobs.queue import enqueue
from avatar_api.models import Avatar, AvatarStatus, Generation, GenerationStatus, Training
from avatar_api.pagination import Cursor
from avatar_api.services import Services
from avatar_api.trainers import strategy_for_endpoint
from avatar_api.trainers.base import GenerationRequest, InvalidTrainerOutput, TrainerStrategy

SUBMIT_JOB = "generation.submit"


def lora_placeholder(training: Training) -> str:
    """Stands for the LoRA URL (a bearer credential) in what we store and show."""
    return f"<lora of training {training.id}>"


def generation_request(
    parameters: Mapping[str, Any], avatar: Avatar, training: Training, *, lora_path: str | None
) -> GenerationRequest:
    """The strategy's request from the stored options, the avatar and its training."""
    return GenerationRequest(
        prompt=parameters["prompt"],
        trigger_phrase=avatar.trigger_phrase,
        gender=avatar.gender.value,
        num_images=parameters.get("num_images", 1),
        image_size=parameters.get("image_size"),
        aspect_ratio=parameters.get("aspect_ratio"),
        seed=parameters.get("seed"),
        guidance_scale=parameters.get("guidance_scale"),
        num_inference_steps=parameters.get("num_inference_steps"),
        strength=parameters.get("strength", 1.0),
        output_format=parameters.get("output_format", "jpeg"),
        lora_path=lora_path,
        finetune_id=training.finetune_id,
    )


def redact_input(fal_input: Mapping[str, Any], training: Training) -> dict[str, Any]:
    """The input as sent, minus the LoRA URL."""
    redacted = dict(fal_input)
    if isinstance(redacted.get("loras"), list):
        redacted["loras"] = [
            {**lora, "path": lora_placeholder(training)} if isinstance(lora, Mapping) else lora
            for lora in redacted["loras"]
        ]
    return redacted


def strategy_of(training: Training, services: Services) -> TrainerStrategy:
    try:
        return strategy_for_endpoint(training.endpoint, services.settings)
    except KeyError as exc:
        raise AvatarNotTrained(
            f"The avatar was trained with '{training.endpoint}', which cannot generate."
        ) from exc


async def to_read(generation: Generation, services: Services) -> GenerationRead:
    ttl = services.settings.download_url_ttl_seconds
    expires_at = services.clock() + timedelta(seconds=ttl)
    images = [
        GeneratedImage(
            url=await services.storage.download_url(image["key"], expires_in=ttl),
            url_expires_at=expires_at,
            width=image.get("width"),
            height=image.get("height"),
            content_type=image["content_type"],
            nsfw=image.get("nsfw"),
        )
        for image in generation.images
    ]
    return GenerationRead(
        id=generation.id,
        avatar_id=generation.avatar_id,
        training_id=generation.training_id,
        status=generation.status,
        prompt=generation.prompt,
        final_prompt=generation.final_prompt,
        parameters=generation.parameters,
        endpoint=generation.endpoint,
        test_mode=generation.test_mode,
        request_id=generation.request_id,
        images=images,
        seed=generation.seed,
        error_code=generation.error_code,
        error_message=generation.error_message,
        queued_at=generation.created_at,
        submitted_at=generation.submitted_at,
        completed_at=generation.completed_at,
        updated_at=generation.updated_at,
    )


async def create_generation(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    data: GenerationCreate,
) -> Generation:
    """Record a queued generation and its submit job in one transaction.

    The fal input is built (and checked) now, so a caller learns at once about options
    the avatar's model cannot take; it is built again at submission with the LoRA URL.
    """
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    training = await repository.latest_completed_training(session, avatar_id=avatar.id)
    if avatar.status is not AvatarStatus.completed or training is None:
        raise AvatarNotTrained(
            f"The avatar is '{avatar.status}'; images can be generated once its training has "
            "completed."
        )
    strategy = strategy_of(training, services)
    parameters = data.model_dump(mode="json")
    try:
        fal_input = strategy.build_generation_input(
            generation_request(parameters, avatar, training, lora_path=lora_placeholder(training))
        )
    except InvalidTrainerOutput as exc:
        raise AvatarNotTrained(f"The avatar's training left no usable result: {exc}") from exc
    generation = Generation(
        tenant_id=avatar.tenant_id,
        avatar_id=avatar.id,
        training_id=training.id,
        prompt=data.prompt,
        final_prompt=fal_input["prompt"],
        parameters=parameters,
        endpoint=strategy.inference_endpoint,
        fal_input=fal_input,
        test_mode=services.settings.effective_test_mode,
    )
    session.add(generation)
    await session.flush()
    await enqueue(
        session,
        kind=SUBMIT_JOB,
        payload={"generation_id": str(generation.id)},
        dedupe_key=f"generation-submit:{generation.id}",
    )
    return generation


async def get_generation(
    session: AsyncSession, *, principal: Principal, generation_id: uuid.UUID
) -> Generation:
    """The caller's generation; another tenant's id is indistinguishable from a missing one."""
    generation = await repository.get(
        session, tenant_id=principal.tenant_id, generation_id=generation_id
    )
    if generation is None:
        raise GenerationNotFound(f"No generation with id {generation_id}.")
    return generation


async def cancel_generation(
    session: AsyncSession, *, principal: Principal, generation_id: uuid.UUID
) -> Generation:
    """Cancel here at once; stopping fal's request (and deleting its payloads) is a job."""
    await get_generation(session, principal=principal, generation_id=generation_id)
    generation = await repository.lock(session, generation_id=generation_id)
    if generation is None:  # erased since the read above
        raise GenerationNotFound(f"No generation with id {generation_id}.")
    if generation.status in TERMINAL:
        raise GenerationNotCancellable("Only a queued or running generation can be cancelled.")
    await set_generation_status(session, generation, GenerationStatus.cancelled)
    generation.error_code = "cancelled"
    generation.error_message = "Cancelled by the caller."
    session.add(generation)
    if generation.request_id is not None:
        await enqueue_cleanup(
            session, endpoint=generation.endpoint, request_id=generation.request_id, cancel=True
        )
    # Still being submitted (no request id yet): the submit job stops fal's copy when fal
    # answers (generations.tasks.submit_generation).
    await session.flush()
    return generation


async def list_generations(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> GenerationPage:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    rows = await repository.list_page(
        session, avatar_id=avatar.id, limit=limit, after=Cursor.decode(cursor) if cursor else None
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = Cursor(created_at=page[-1].created_at, id=page[-1].id).encode() if more else None
    return GenerationPage(items=[await to_read(g, services) for g in page], next_cursor=next_cursor)
