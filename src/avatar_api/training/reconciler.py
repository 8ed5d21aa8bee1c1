"""The reconciler: polls fal for trainings without news, and ends trainings stuck too long.

Every worker process runs one. They may overlap safely: polls are enqueued with a
per-training dedupe key, and every status change is a compare-and-set under row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlmodel import col, delete, select

from avatar_api.db import session_scope
from avatar_api.generations.service import SUBMIT_JOB as GENERATION_SUBMIT_JOB
from avatar_api.generations.tasks import reconcile_generations
from avatar_api.jobs.maintenance import purge_finished
from avatar_api.jobs.queue import enqueue
from avatar_api.models import Generation, IdempotencyKey, Training
from avatar_api.quotas import purge_old_charges
from avatar_api.services import Services
from avatar_api.training import repository
from avatar_api.training.retention import apply_retention
from avatar_api.training.service import CANCEL_REMOTE_JOB, SUBMIT_JOB
from avatar_api.training.tasks import POLL_JOB, fail_training

logger = logging.getLogger("avatar_api.training")
BATCH = 100
ORPHAN_AFTER = timedelta(minutes=5)
FINISHED_JOBS_KEPT = timedelta(days=7)
IDEMPOTENCY_KEYS_KEPT = timedelta(hours=24)
HOUSEKEEPING_EVERY = 600.0  # seconds


async def reconcile_once(services: Services) -> dict[str, int]:
    settings = services.settings
    now = services.clock()
    counts = {"polls": 0, "submission_lost": 0, "timed_out": 0}
    async with session_scope(services.sessionmaker) as session:
        due = await repository.due_for_poll(
            session,
            checked_before=now - timedelta(seconds=settings.training_poll_interval_seconds),
            limit=BATCH,
        )
        for training in due:
            await enqueue(
                session,
                kind=POLL_JOB,
                payload={"training_id": str(training.id)},
                dedupe_key=f"poll:{training.id}",
            )
            # Marks the poll as asked for, so the next pass does not enqueue it again.
            training.last_checked_at = now
            session.add(training)
            counts["polls"] += 1

    async with session_scope(services.sessionmaker) as session:
        stuck = await repository.stuck_submitting(
            session,
            started_before=now - timedelta(seconds=settings.training_submit_timeout_seconds),
            limit=BATCH,
        )
        for candidate in stuck:
            locked = await repository.lock_with_avatar(session, training_id=candidate.id)
            if locked is None or locked[0].request_id is not None:
                continue
            if await fail_training(
                session,
                *locked,
                code="submission_lost",
                message="fal's answer to the submission was lost and no webhook followed; "
                "start the training again.",
            ):
                counts["submission_lost"] += 1

    async with session_scope(services.sessionmaker) as session:
        overdue = await repository.running_since(
            session,
            submitted_before=now - timedelta(seconds=settings.training_hard_timeout_seconds),
            limit=BATCH,
        )
        for candidate in overdue:
            locked = await repository.lock_with_avatar(session, training_id=candidate.id)
            if locked is None:
                continue
            if await fail_training(
                session,
                *locked,
                code="training_timeout",
                message="The training did not finish in time and was stopped.",
            ):
                await enqueue(
                    session,
                    kind=CANCEL_REMOTE_JOB,
                    payload={"training_id": str(candidate.id)},
                    dedupe_key=f"cancel:{candidate.id}",
                )
                counts["timed_out"] += 1
    counts.update(await reconcile_generations(services))
    counts["retention"] = await apply_retention(services)
    if any(counts.values()):
        logger.info("training.reconciled", extra=counts)
    return counts


async def requeue_orphaned_submits(services: Services) -> None:
    """Queued work whose submit job vanished (a lease lost at the wrong moment) gets one.

    The dedupe key makes this a no-op for the usual case of a job still pending.
    """
    cutoff = services.clock() - ORPHAN_AFTER
    targets = (
        (Training, SUBMIT_JOB, "training_id", "submit"),
        (Generation, GENERATION_SUBMIT_JOB, "generation_id", "generation-submit"),
    )
    async with session_scope(services.sessionmaker) as session:
        for model, kind, field, prefix in targets:
            ids = (
                await session.exec(
                    select(model.id)
                    .where(col(model.status) == "queued", col(model.created_at) < cutoff)
                    .order_by(col(model.id))
                    .limit(BATCH)
                )
            ).all()
            for row_id in ids:
                await enqueue(
                    session,
                    kind=kind,
                    payload={field: str(row_id)},
                    dedupe_key=f"{prefix}:{row_id}",
                )


async def housekeeping(services: Services) -> dict[str, int]:
    """Old finished jobs, idempotency keys and quota charges go; they only grow otherwise."""
    now = services.clock()
    async with session_scope(services.sessionmaker) as session:
        jobs = await purge_finished(session, older_than=FINISHED_JOBS_KEPT, now=now)
        keys = (
            await session.exec(
                delete(IdempotencyKey).where(
                    col(IdempotencyKey.created_at) < now - IDEMPOTENCY_KEYS_KEPT
                )
            )
        ).rowcount
        charges = await purge_old_charges(session, now=now)
    return {
        "purged_jobs": jobs,
        "purged_idempotency_keys": int(keys or 0),
        "purged_quota_charges": charges,
    }


async def run_reconciler(services: Services, stop: asyncio.Event) -> None:
    interval = services.settings.training_reconcile_interval_seconds
    last_housekeeping = 0.0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await reconcile_once(services)
            await requeue_orphaned_submits(services)
            if loop.time() - last_housekeeping > HOUSEKEEPING_EVERY:
                logger.info("maintenance.housekeeping", extra=await housekeeping(services))
                last_housekeeping = loop.time()
        except Exception:
            logger.exception("training.reconcile_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
