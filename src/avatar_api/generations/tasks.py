"""Job handlers that drive a generation: submit, poll, apply fal's webhook; the reconciler pass.

Like training's handlers, they open their own short transactions instead of using the
job's session: the submission must be recorded as attempted (and committed) before fal is
called, and no transaction may stay open across a network call (fal, or the image copy).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.fal.gateway import (
    FalState,
    FalStatus,
)
from avatar_api.fal.outcome import FalRequestGone, fetch_outcome
from avatar_api.fal.submission import submit_to_fal
from avatar_api.generations import repository
from avatar_api.generations.events import notify
from avatar_api.generations.images import (
    ImageCopyFailed,
    InvalidGenerationOutput,
    copy_image,
    parse_output,
)
from avatar_api.generations.service import (
    SUBMIT_JOB,
    generation_request,
    redact_input,
)
from avatar_api.generations.state import TERMINAL, set_generation_status
from avatar_api.generations.tokens import webhook_url
from avatar_api.jobs.errors import RetryableJobError
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import (
    Avatar,
    Generation,
    GenerationStatus,
    GenerationWebhookEvent,
    Training,
)
from avatar_api.services import Services
from avatar_api.trainers import strategy_for_endpoint
from avatar_api.trainers.base import InvalidGenerationInput, InvalidTrainerOutput

logger = logging.getLogger("avatar_api.generations")

POLL_JOB = "generation.poll"
APPLY_JOB = "generation.apply"
BATCH = 100
# Generations take seconds to minutes: the training limits apply, capped to these.
SUBMIT_TIMEOUT_SECONDS = 600.0
HARD_TIMEOUT_SECONDS = 3600.0


def _generation_id(ctx: JobContext) -> uuid.UUID:
    return uuid.UUID(str(ctx.job.payload["generation_id"]))


def _log_context(generation: Generation) -> dict[str, str]:
    return {
        "generation_id": str(generation.id),
        "avatar_id": str(generation.avatar_id),
        "tenant_id": str(generation.tenant_id),
    }


async def fail_generation(
    session: AsyncSession, services: Services, generation: Generation, *, code: str, message: str
) -> bool:
    """Fail a locked generation and tell the caller; False when it had already ended."""
    if generation.status in TERMINAL:
        return False
    generation.error_code = code
    generation.error_message = message[:2000]
    await set_generation_status(session, generation, GenerationStatus.failed)
    avatar = await session.get(Avatar, generation.avatar_id)
    if avatar is not None:
        await notify(session, services, generation, avatar)
    logger.warning("generation.failed", extra={**_log_context(generation), "error_code": code})
    return True


async def _fail_by_id(
    services: Services,
    generation_id: uuid.UUID,
    *,
    code: str,
    message: str,
    event_id: uuid.UUID | None = None,
) -> None:
    async with session_scope(services.sessionmaker) as session:
        generation = await repository.lock(session, generation_id=generation_id)
        if generation is not None:
            await fail_generation(session, services, generation, code=code, message=message)
        await _mark_applied(session, event_id)


async def _mark_applied(session: AsyncSession, event_id: uuid.UUID | None) -> None:
    if event_id is None:
        return
    event = await session.get(GenerationWebhookEvent, event_id)
    if event is not None and event.applied_at is None:
        event.applied_at = utcnow()
        session.add(event)


async def _lora_path(services: Services, training: Training) -> str | None:
    """Our copy of the LoRA file when we hold one (fal's CDN URLs expire), else fal's URL."""
    # ``lora_key`` is set by the training.copy_result job once the copy is in storage.
    if training.lora_key:
        # fal fetches it when the request leaves its queue: hours, not minutes.
        return await services.storage.download_url(
            training.lora_key, expires_in=services.settings.archive_url_ttl_seconds
        )
    return training.lora_url


# --- generation.submit -----------------------------------------------------------------------


async def submit_generation(ctx: JobContext) -> None:
    services = ctx.services
    settings = services.settings
    generation_id = _generation_id(ctx)
    async with session_scope(services.sessionmaker) as session:
        generation = await session.get(Generation, generation_id)
        if generation is None:
            return
        if generation.status is not GenerationStatus.queued:
            if generation.status is GenerationStatus.submitting and generation.request_id is None:
                # A previous run reached fal's door and its outcome is unknown: resubmitting
                # could bill twice. The webhook (which carries our token) or the reconciler's
                # timeout settles it.
                logger.warning("generation.submit_outcome_unknown", extra=_log_context(generation))
            return
        avatar = await session.get(Avatar, generation.avatar_id)
        training = await session.get(Training, generation.training_id)
    if avatar is None or training is None:
        return

    try:
        strategy = strategy_for_endpoint(training.endpoint, settings)
        fal_input = strategy.build_generation_input(
            generation_request(
                generation.parameters,
                avatar,
                training,
                lora_path=await _lora_path(services, training),
            )
        )
    except (KeyError, InvalidGenerationInput, InvalidTrainerOutput) as exc:
        await _fail_by_id(
            services, generation_id, code="invalid_input", message=f"Cannot build the input: {exc}"
        )
        return

    async with session_scope(services.sessionmaker) as session:
        locked = await repository.lock(session, generation_id=generation_id)
        if locked is None or locked.status is not GenerationStatus.queued:
            return
        locked.fal_input = redact_input(fal_input, training)
        locked.final_prompt = fal_input["prompt"]
        locked.submit_started_at = utcnow()
        await set_generation_status(session, locked, GenerationStatus.submitting)
        generation = locked

    await submit_to_fal(
        services,
        _GenerationSubmit(
            generation_id,
            services=services,
            log_context={**_log_context(generation), "test_mode": generation.test_mode},
        ),
        endpoint=generation.endpoint,
        fal_input=fal_input,
        webhook_url=webhook_url(settings, generation_id),
        logger=logger,
    )


@dataclass
class _GenerationSubmit:
    """:class:`~avatar_api.fal.submission.SubmitHooks` for a generation."""

    generation_id: uuid.UUID
    services: Services
    log_context: Mapping[str, object]
    kind: str = "generation"

    async def requeue(self, session: AsyncSession) -> None:
        locked = await repository.lock(session, generation_id=self.generation_id)
        if locked is not None and locked.status is GenerationStatus.submitting:
            locked.submit_started_at = None
            await set_generation_status(session, locked, GenerationStatus.queued)

    async def reject(self, session: AsyncSession, reason: str) -> None:
        locked = await repository.lock(session, generation_id=self.generation_id)
        if locked is not None:
            await fail_generation(
                session,
                self.services,
                locked,
                code="fal_rejected",
                message=f"fal refused the input: {reason}",
            )

    async def accept(self, session: AsyncSession, request_id: str) -> bool:
        locked = await repository.lock(session, generation_id=self.generation_id)
        if locked is None:
            return False
        locked.request_id = locked.request_id or request_id
        locked.submitted_at = locked.submitted_at or utcnow()
        if locked.status is GenerationStatus.submitting:
            await set_generation_status(session, locked, GenerationStatus.in_queue)
        elif locked.status is GenerationStatus.cancelled:
            # Cancelled while fal was answering: stop the request it just created.
            await enqueue_cleanup(
                session, endpoint=locked.endpoint, request_id=request_id, cancel=True
            )
        session.add(locked)
        return True


async def submit_gave_up(ctx: JobContext, reason: str) -> None:
    generation = await repository.lock(ctx.session, generation_id=_generation_id(ctx))
    if generation is not None and generation.status is GenerationStatus.queued:
        await fail_generation(
            ctx.session,
            ctx.services,
            generation,
            code="submit_failed",
            message=f"Could not submit to fal: {reason}",
        )


# --- applying fal's news (poll results and webhooks) ----------------------------------------


async def apply_status(session: AsyncSession, generation: Generation, status: FalStatus) -> None:
    """Queue state from a status answer (never a terminal decision)."""
    if generation.status in TERMINAL:
        return
    generation.last_checked_at = utcnow()
    if status.state is FalState.IN_QUEUE:
        if generation.status is GenerationStatus.submitting:
            await set_generation_status(session, generation, GenerationStatus.in_queue)
    elif generation.status in (GenerationStatus.submitting, GenerationStatus.in_queue):
        await set_generation_status(session, generation, GenerationStatus.in_progress)
    session.add(generation)
    await session.flush()


async def complete_with_output(
    services: Services,
    generation_id: uuid.UUID,
    output: Mapping[str, Any],
    *,
    event_id: uuid.UUID | None = None,
) -> None:
    """Copy fal's images into our storage, then complete the generation.

    The copy runs outside any transaction; the keys are fixed per generation and image, so
    a webhook and a poll racing here write the same objects and only one completes.
    """
    async with session_scope(services.sessionmaker) as session:
        generation = await session.get(Generation, generation_id)
    if generation is None or generation.status in TERMINAL:
        async with session_scope(services.sessionmaker) as session:
            await _mark_applied(session, event_id)
        return
    try:
        parsed = parse_output(output)
    except InvalidGenerationOutput as exc:
        await _fail_by_id(
            services,
            generation_id,
            code="invalid_generation_output",
            message=str(exc),
            event_id=event_id,
        )
        return
    output_format = str(generation.parameters.get("output_format", "jpeg"))
    images: list[dict[str, Any]] = []
    try:
        for index, image in enumerate(parsed.images):
            images.append(
                await copy_image(
                    services.http,
                    services.storage,
                    image,
                    tenant_id=generation.tenant_id,
                    avatar_id=generation.avatar_id,
                    generation_id=generation.id,
                    index=index,
                    output_format=output_format,
                    require_https=not generation.test_mode,
                )
            )
    except ImageCopyFailed as exc:
        if exc.retriable:
            raise RetryableJobError(str(exc)) from exc
        await _fail_by_id(
            services,
            generation_id,
            code="image_copy_failed",
            message=f"Could not copy the generated images: {exc}",
            event_id=event_id,
        )
        return

    async with session_scope(services.sessionmaker) as session:
        locked = await repository.lock(session, generation_id=generation_id)
        await _mark_applied(session, event_id)
        if locked is None or locked.status in TERMINAL:
            if locked is None or locked.status is not GenerationStatus.completed:
                # Deleted or failed meanwhile: nobody will ever serve these copies.
                for image_row in images:
                    await services.storage.delete(image_row["key"])
            return
        locked.images = images
        locked.seed = parsed.seed
        locked.last_checked_at = utcnow()
        await set_generation_status(session, locked, GenerationStatus.completed)
        avatar = await session.get(Avatar, locked.avatar_id)
        if avatar is not None:
            await notify(session, services, locked, avatar)
    logger.info("generation.completed", extra={**_log_context(generation), "images": len(images)})


async def poll_generation(ctx: JobContext) -> None:
    services = ctx.services
    generation_id = _generation_id(ctx)
    async with session_scope(services.sessionmaker) as session:
        generation = await session.get(Generation, generation_id)
    if generation is None or generation.status in TERMINAL or generation.request_id is None:
        return
    try:
        outcome = await fetch_outcome(services.gateway, generation.endpoint, generation.request_id)
    except FalRequestGone as exc:
        await _fail_by_id(
            services, generation_id, code="fal_error", message=f"fal lost the request: {exc}"
        )
        return
    status, output = outcome.status, outcome.output
    async with session_scope(services.sessionmaker) as session:
        locked = await repository.lock(session, generation_id=generation_id)
        if locked is None:
            return
        await apply_status(session, locked, status)
        if status.state is FalState.COMPLETED and status.failed:
            await fail_generation(
                session,
                services,
                locked,
                code=f"fal_{status.error_type or 'error'}"[:64],
                message=status.error or f"fal reported {status.error_type}",
            )
    if output is not None:
        await complete_with_output(services, generation_id, output)


def _error_detail(body: Mapping[str, Any]) -> str:
    detail = str(body.get("error") or body.get("payload_error") or "fal reported an error")
    payload = body.get("payload")
    if isinstance(payload, Mapping) and isinstance(payload.get("detail"), list | str):
        detail = f"{detail}: {payload['detail']}"
    return detail


async def apply_generation_event(ctx: JobContext) -> None:
    """Apply a stored fal webhook; compare-and-set, so duplicates and late ones are no-ops."""
    services = ctx.services
    event_id = uuid.UUID(str(ctx.job.payload["event_id"]))
    async with session_scope(services.sessionmaker) as session:
        event = await session.get(GenerationWebhookEvent, event_id)
    if event is None or event.applied_at is not None:
        return
    payload = event.body.get("payload")
    if event.status == "OK" and isinstance(payload, Mapping):
        await complete_with_output(services, event.generation_id, payload, event_id=event.id)
    else:
        await _fail_by_id(
            services,
            event.generation_id,
            code="fal_error",
            message=_error_detail(event.body),
            event_id=event.id,
        )


async def apply_gave_up(ctx: JobContext, reason: str) -> None:
    event = await ctx.session.get(
        GenerationWebhookEvent, uuid.UUID(str(ctx.job.payload["event_id"]))
    )
    if event is None:
        return
    generation = await repository.lock(ctx.session, generation_id=event.generation_id)
    if generation is not None:
        await fail_generation(
            ctx.session,
            ctx.services,
            generation,
            code="image_copy_failed",
            message=f"Could not keep fal's result: {reason}",
        )


# --- the reconciler's generation pass ---------------------------------------------------------


async def reconcile_generations(services: Services) -> dict[str, int]:
    """Poll generations without news; fail lost submissions and overdue generations."""
    settings = services.settings
    now = services.clock()
    counts = {"generation_polls": 0, "generation_submission_lost": 0, "generation_timed_out": 0}
    async with session_scope(services.sessionmaker) as session:
        due = await repository.due_for_poll(
            session,
            checked_before=now - timedelta(seconds=settings.training_poll_interval_seconds),
            limit=BATCH,
        )
        for generation in due:
            await enqueue(
                session,
                kind=POLL_JOB,
                payload={"generation_id": str(generation.id)},
                dedupe_key=f"generation-poll:{generation.id}",
            )
            # Marks the poll as asked for, so the next pass does not enqueue it again.
            generation.last_checked_at = now
            session.add(generation)
            counts["generation_polls"] += 1

    submit_timeout = min(settings.training_submit_timeout_seconds, SUBMIT_TIMEOUT_SECONDS)
    async with session_scope(services.sessionmaker) as session:
        stuck = await repository.stuck_submitting(
            session, started_before=now - timedelta(seconds=submit_timeout), limit=BATCH
        )
        for candidate in stuck:
            locked = await repository.lock(session, generation_id=candidate.id)
            if locked is None or locked.request_id is not None:
                continue
            if await fail_generation(
                session,
                services,
                locked,
                code="submission_lost",
                message="fal's answer to the submission was lost and no webhook followed; "
                "create the generation again.",
            ):
                counts["generation_submission_lost"] += 1

    hard_timeout = min(settings.training_hard_timeout_seconds, HARD_TIMEOUT_SECONDS)
    async with session_scope(services.sessionmaker) as session:
        overdue = await repository.running_since(
            session, submitted_before=now - timedelta(seconds=hard_timeout), limit=BATCH
        )
        for candidate in overdue:
            locked = await repository.lock(session, generation_id=candidate.id)
            if locked is not None and await fail_generation(
                session,
                services,
                locked,
                code="generation_timeout",
                message="The generation did not finish in time.",
            ):
                counts["generation_timed_out"] += 1
    return counts


GENERATION_JOB_KINDS = [
    JobKind(name=SUBMIT_JOB, handler=submit_generation, on_give_up=submit_gave_up),
    JobKind(name=POLL_JOB, handler=poll_generation),
    JobKind(name=APPLY_JOB, handler=apply_generation_event, on_give_up=apply_gave_up),
]
