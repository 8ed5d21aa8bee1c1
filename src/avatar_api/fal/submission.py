"""The call that hands one request to fal, shared by trainings and generations.

Before it runs, the row was moved to ``submitting`` and committed: a crash from here on
leaves a row that says a submission may have happened, and nothing ever submits it twice.
Whatever fal answers, the row ends in a safe state:

- fal certainly did not get it (:class:`FalRetriableError`): back to ``queued``, and the
  job is retried with backoff;
- fal refused the input (:class:`FalPermanentError`): failed, with fal's reason;
- the outcome is unknown (:class:`FalSubmitAmbiguous`): left as it is; the signed webhook
  (which carries the row's token) or the reconciler's timeout settles it;
- fal took it: its request id is recorded. A row erased meanwhile has the new request
  stopped at fal (nobody else knows it); a row cancelled meanwhile is stopped by its hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import session_scope, utcnow
from avatar_api.fal.cleanup import enqueue_cleanup
from avatar_api.fal.gateway import FalPermanentError, FalRetriableError, FalSubmitAmbiguous
from avatar_api.jobs.errors import RetryableJobError
from avatar_api.services import Services


class SubmitHooks(Protocol):
    """How one kind of row (a training, a generation) follows its submit call.

    Each hook runs in its own short transaction and locks the row itself.
    """

    kind: str  # "training" or "generation": the prefix of the log events
    log_context: Mapping[str, object]

    async def requeue(self, session: AsyncSession) -> None:
        """fal never got it: back to ``queued`` if the row is still ``submitting``."""

    async def reject(self, session: AsyncSession, reason: str) -> None:
        """fal refused the input: fail the row (unless it ended meanwhile)."""

    async def accept(self, session: AsyncSession, request_id: str) -> bool:
        """Record fal's request id; False when the row no longer exists."""


async def submit_to_fal(
    services: Services,
    hooks: SubmitHooks,
    *,
    endpoint: str,
    fal_input: Mapping[str, Any],
    webhook_url: str,
    logger: logging.Logger,
) -> None:
    started = utcnow()
    try:
        submission = await services.gateway.submit(
            endpoint, fal_input, webhook_url=webhook_url, store_io=services.settings.fal_store_io
        )
    except FalSubmitAmbiguous as exc:
        logger.warning(
            f"{hooks.kind}.submit_ambiguous", extra={**hooks.log_context, "error": str(exc)}
        )
        return
    except FalRetriableError as exc:
        async with session_scope(services.sessionmaker) as session:
            await hooks.requeue(session)
        raise RetryableJobError(f"fal unavailable: {exc}") from exc
    except FalPermanentError as exc:
        async with session_scope(services.sessionmaker) as session:
            await hooks.reject(session, str(exc))
        return

    async with session_scope(services.sessionmaker) as session:
        if not await hooks.accept(session, submission.request_id):
            # Erased while fal was answering: nobody else knows this request, so stop it.
            await enqueue_cleanup(
                session, endpoint=endpoint, request_id=submission.request_id, cancel=True
            )
            return
    logger.info(
        f"{hooks.kind}.submitted",
        extra={
            **hooks.log_context,
            "request_id": submission.request_id,
            "endpoint": endpoint,
            "duration_ms": round((utcnow() - started).total_seconds() * 1000),
        },
    )
