"""The reconciler: polls fal for trainings without news, and ends trainings stuck too long.

Every worker process runs one. They may overlap safely: polls are enqueued with a
per-training dedupe key, and every status change is a compare-and-set under row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from avatar_api.db import session_scope
from avatar_api.generations.tasks import reconcile_generations
from avatar_api.jobs.queue import enqueue
from avatar_api.services import Services
from avatar_api.training import repository
from avatar_api.training.retention import apply_retention
from avatar_api.training.service import CANCEL_REMOTE_JOB
from avatar_api.training.tasks import POLL_JOB, fail_training

logger = logging.getLogger("avatar_api.training")
BATCH = 100


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


async def run_reconciler(services: Services, stop: asyncio.Event) -> None:
    interval = services.settings.training_reconcile_interval_seconds
    while not stop.is_set():
        try:
            await reconcile_once(services)
        except Exception:
            logger.exception("training.reconcile_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
