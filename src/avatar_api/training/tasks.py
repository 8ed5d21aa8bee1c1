"""Job handlers that drive a training: submit, poll, apply fal's news, cancel at fal.

Handlers open their own short transactions instead of using the job's session: the
submission must be recorded as attempted (and committed) before fal is called, and no
transaction may stay open across a network call (on SQLite it would block every writer).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.gateway import (
    CancelOutcome,
    FalRetriableError,
    FalState,
    FalStatus,
)
from avatar_api.fal.outcome import FalRequestGone, fetch_outcome
from avatar_api.fal.submission import submit_to_fal
from avatar_api.jobs.errors import RetryableJobError
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import Avatar, FalWebhookEvent, Training, TrainingStatus
from avatar_api.photos.repository import list_for_avatar
from avatar_api.services import Services
from avatar_api.storage_keys import archive_key
from avatar_api.trainers import TrainingRequest, strategy_for_endpoint
from avatar_api.trainers.base import InvalidTrainerOutput
from avatar_api.training import repository
from avatar_api.training.archive import build_archive
from avatar_api.training.events import notify
from avatar_api.training.results import COPY_RESULT_JOB
from avatar_api.training.service import CANCEL_REMOTE_JOB, SUBMIT_JOB
from avatar_api.training.state import TERMINAL, set_training_status
from avatar_api.training.tokens import webhook_url

logger = logging.getLogger("avatar_api.training")

POLL_JOB = "training.poll"
APPLY_EVENT_JOB = "fal_event.apply"
ARCHIVE_FIELDS = ("images_data_url", "data_url")
_STEP_PATTERNS = (
    re.compile(r"(?i)\bstep[s]?\s*[:=]?\s*(\d+)\s*(?:/|of)\s*(\d+)"),
    re.compile(r"\b(\d+)/(\d+)\s*\["),  # tqdm progress bars
)


def _training_id(ctx: JobContext) -> uuid.UUID:
    return uuid.UUID(str(ctx.job.payload["training_id"]))


def redact_input(fal_input: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The input as sent, minus the archive URL (a bearer credential for the photos)."""
    return {k: (f"<archive {key}>" if k in ARCHIVE_FIELDS else v) for k, v in fal_input.items()}


def parse_progress(logs: Sequence[str]) -> tuple[int, int] | None:
    for line in reversed(logs):
        for pattern in _STEP_PATTERNS:
            found = pattern.findall(line)
            if found:
                done, total = (int(n) for n in found[-1])
                if 0 <= done <= total and total > 0:
                    return done, total
    return None


def _log_context(training: Training) -> dict[str, str]:
    return {
        "training_id": str(training.id),
        "avatar_id": str(training.avatar_id),
        "tenant_id": str(training.tenant_id),
    }


async def fail_training(
    session: AsyncSession, training: Training, avatar: Avatar, *, code: str, message: str
) -> bool:
    if training.status in TERMINAL:
        return False
    training.error_code = code
    training.error_message = message[:2000]
    await set_training_status(session, training, avatar, TrainingStatus.failed)
    await notify(session, training, avatar)
    logger.warning("training.failed", extra={**_log_context(training), "error_code": code})
    return True


# --- training.submit -----------------------------------------------------------------------


async def submit_training(ctx: JobContext) -> None:
    services = ctx.services
    settings = services.settings
    training_id = _training_id(ctx)
    async with session_scope(services.sessionmaker) as session:
        training = await session.get(Training, training_id)
        if training is None:
            return
        if training.status is not TrainingStatus.queued:
            if training.status is TrainingStatus.submitting and training.request_id is None:
                # A previous run reached fal's door and its outcome is unknown: resubmitting
                # could bill twice. The webhook (which carries our token) or the reconciler's
                # timeout settles it.
                logger.warning("training.submit_outcome_unknown", extra=_log_context(training))
            return
        avatar = await session.get(Avatar, training.avatar_id)
        photos = await list_for_avatar(
            session, tenant_id=training.tenant_id, avatar_id=training.avatar_id
        )
        assert avatar is not None
        trigger, comment = avatar.trigger_phrase, f"{avatar.name} ({avatar.id})"

    key = archive_key(training.tenant_id, training.avatar_id, training.id)
    await build_archive(services.storage, [p.storage_key for p in photos], key)
    url = await services.storage.download_url(key, expires_in=settings.archive_url_ttl_seconds)
    strategy = strategy_for_endpoint(training.endpoint, settings)
    fal_input = strategy.build_input(
        TrainingRequest(
            archive_url=url, trigger_phrase=trigger, parameters=training.parameters, comment=comment
        )
    )

    async with session_scope(services.sessionmaker) as session:
        locked = await repository.lock_with_avatar(session, training_id=training_id)
        if locked is None or locked[0].status is not TrainingStatus.queued:
            # Cancelled or erased while the archive was built: the archive must not outlive
            # that (an erased avatar's prefix was already deleted).
            await services.storage.delete(key)
            return
        training, avatar = locked
        training.archive_key = key
        training.photo_count = len(photos)
        training.fal_input = redact_input(fal_input, key)
        training.submit_started_at = utcnow()
        await set_training_status(session, training, avatar, TrainingStatus.submitting)

    await submit_to_fal(
        services,
        _TrainingSubmit(
            training_id, log_context={**_log_context(training), "test_mode": training.test_mode}
        ),
        endpoint=training.endpoint,
        fal_input=fal_input,
        webhook_url=webhook_url(settings, training_id),
        logger=logger,
    )


@dataclass
class _TrainingSubmit:
    """:class:`~avatar_api.fal.submission.SubmitHooks` for a training."""

    training_id: uuid.UUID
    log_context: Mapping[str, object]
    kind: str = "training"

    async def requeue(self, session: AsyncSession) -> None:
        locked = await repository.lock_with_avatar(session, training_id=self.training_id)
        if locked is not None and locked[0].status is TrainingStatus.submitting:
            locked[0].submit_started_at = None
            await set_training_status(session, locked[0], locked[1], TrainingStatus.queued)

    async def reject(self, session: AsyncSession, reason: str) -> None:
        locked = await repository.lock_with_avatar(session, training_id=self.training_id)
        if locked is not None:
            await fail_training(
                session, *locked, code="fal_rejected", message=f"fal refused the training: {reason}"
            )

    async def accept(self, session: AsyncSession, request_id: str) -> bool:
        locked = await repository.lock_with_avatar(session, training_id=self.training_id)
        if locked is None:
            return False
        training, avatar = locked
        training.request_id = training.request_id or request_id
        training.submitted_at = training.submitted_at or utcnow()
        if training.status is TrainingStatus.submitting:
            await set_training_status(session, training, avatar, TrainingStatus.in_queue)
        elif training.status is TrainingStatus.cancelled:
            # Cancelled while we were submitting: stop it at fal too.
            await enqueue(
                session,
                kind=CANCEL_REMOTE_JOB,
                payload={"training_id": str(training.id)},
                dedupe_key=f"cancel:{training.id}",
            )
        session.add(training)
        return True


async def submit_gave_up(ctx: JobContext, reason: str) -> None:
    locked = await repository.lock_with_avatar(ctx.session, training_id=_training_id(ctx))
    if locked is not None and locked[0].status is TrainingStatus.queued:
        await fail_training(
            ctx.session, *locked, code="submit_failed", message=f"Could not submit to fal: {reason}"
        )


# --- applying fal's news (poll results and webhooks) ----------------------------------------


async def apply_status(
    session: AsyncSession, training: Training, avatar: Avatar, status: FalStatus, *, max_logs: int
) -> None:
    """Queue position, progress and logs from a status answer (never a terminal decision)."""
    if training.status in TERMINAL:
        return
    training.last_checked_at = utcnow()
    if status.logs:
        # fal answers with the request's whole log on every status call: keep its tail.
        training.logs = list(status.logs[-max_logs:])
        progress = parse_progress(status.logs)
        if progress is not None:
            training.progress_steps, training.progress_total = progress
    if status.state is FalState.IN_QUEUE:
        training.queue_position = status.queue_position
        if training.status is TrainingStatus.submitting:
            await set_training_status(session, training, avatar, TrainingStatus.in_queue)
    elif status.state in (FalState.IN_PROGRESS, FalState.COMPLETED):
        training.queue_position = None
        if training.status in (TrainingStatus.submitting, TrainingStatus.in_queue):
            await set_training_status(session, training, avatar, TrainingStatus.in_progress)
            await notify(session, training, avatar)
    session.add(training)
    await session.flush()


async def complete_training(
    session: AsyncSession,
    training: Training,
    avatar: Avatar,
    output: Mapping[str, Any],
    services: Services,
) -> bool:
    if training.status in TERMINAL:
        logger.info("training.late_news_ignored", extra=_log_context(training))
        return False
    strategy = strategy_for_endpoint(training.endpoint, services.settings)
    try:
        result = strategy.parse_result(output)
    except InvalidTrainerOutput as exc:
        return await fail_training(
            session, training, avatar, code="invalid_trainer_output", message=str(exc)
        )
    training.lora_url = result.lora_url
    training.lora_size = result.lora_size
    training.config_url = result.config_url
    training.finetune_id = result.finetune_id
    if training.progress_total:
        training.progress_steps = training.progress_total
    await set_training_status(session, training, avatar, TrainingStatus.completed)
    if training.lora_url is not None:
        await enqueue(
            session,
            kind=COPY_RESULT_JOB,
            payload={"training_id": str(training.id)},
            dedupe_key=f"copy:{training.id}",
        )
    await notify(session, training, avatar)
    logger.info("avatar.training_completed", extra=_log_context(training))
    return True


async def poll_training(ctx: JobContext) -> None:
    services = ctx.services
    training_id = _training_id(ctx)
    async with session_scope(services.sessionmaker) as session:
        training = await session.get(Training, training_id)
    if training is None or training.status in TERMINAL or training.request_id is None:
        return
    try:
        outcome = await fetch_outcome(services.gateway, training.endpoint, training.request_id)
    except FalRequestGone as exc:
        async with session_scope(services.sessionmaker) as session:
            locked = await repository.lock_with_avatar(session, training_id=training_id)
            if locked is not None:
                await fail_training(
                    session, *locked, code="fal_error", message=f"fal cannot report on it: {exc}"
                )
        return
    status, output = outcome.status, outcome.output
    async with session_scope(services.sessionmaker) as session:
        locked = await repository.lock_with_avatar(session, training_id=training_id)
        if locked is None:
            return
        training, avatar = locked
        await apply_status(
            session, training, avatar, status, max_logs=services.settings.training_max_log_lines
        )
        if status.state is FalState.COMPLETED:
            if status.failed:
                await fail_training(
                    session,
                    training,
                    avatar,
                    code=f"fal_{status.error_type or 'error'}",
                    message=status.error or f"fal reported a failure ({status.error_type})",
                )
            elif output is not None:
                await complete_training(session, training, avatar, output, services)


async def apply_fal_event(ctx: JobContext) -> None:
    """Apply a stored fal webhook; compare-and-set, so duplicates and late ones are no-ops."""
    event = await ctx.session.get(FalWebhookEvent, uuid.UUID(str(ctx.job.payload["event_id"])))
    if event is None or event.applied_at is not None:
        return
    locked = await repository.lock_with_avatar(ctx.session, training_id=event.training_id)
    if locked is None:
        return
    training, avatar = locked
    body = event.body
    training.last_checked_at = utcnow()
    payload = body.get("payload")
    if event.status == "OK" and isinstance(payload, Mapping):
        await complete_training(ctx.session, training, avatar, payload, ctx.services)
    else:
        detail = body.get("error") or body.get("payload_error") or "fal reported an error"
        if isinstance(payload, Mapping) and isinstance(payload.get("detail"), list | str):
            detail = f"{detail}: {payload['detail']}"
        await fail_training(ctx.session, training, avatar, code="fal_error", message=str(detail))
    event.applied_at = utcnow()
    ctx.session.add(event)


# --- training.cancel_remote ------------------------------------------------------------------


async def cancel_remote(ctx: JobContext) -> None:
    async with session_scope(ctx.services.sessionmaker) as session:
        training = await session.get(Training, _training_id(ctx))
    if training is None or training.request_id is None:
        return
    try:
        outcome = await ctx.services.gateway.cancel(training.endpoint, training.request_id)
    except FalRetriableError as exc:
        raise RetryableJobError(f"fal cancel unavailable: {exc}") from exc
    logger.info(
        "training.cancelled_at_fal",
        extra={**_log_context(training), "outcome": CancelOutcome(outcome).value},
    )


TRAINING_JOB_KINDS = [
    JobKind(name=SUBMIT_JOB, handler=submit_training, on_give_up=submit_gave_up),
    JobKind(name=POLL_JOB, handler=poll_training),
    JobKind(name=APPLY_EVENT_JOB, handler=apply_fal_event),
    JobKind(name=CANCEL_REMOTE_JOB, handler=cancel_remote),
]
