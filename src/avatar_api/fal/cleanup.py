"""Asking fal to stop a request and forget its payloads, as a retried job.

The job carries the endpoint and request id themselves, so it still works after the rows
that referenced the request are gone (an erased avatar, a training cancelled mid-submit).
"""

from __future__ import annotations

import logging

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.fal.gateway import FalPermanentError, FalRetriableError
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.queue import enqueue
from avatar_api.jobs.registry import JobContext, JobKind

logger = logging.getLogger("avatar_api.fal")

PROVIDER_CLEANUP_JOB = "fal.cleanup_request"


async def enqueue_cleanup(
    session: AsyncSession, *, endpoint: str, request_id: str, cancel: bool
) -> None:
    await enqueue(
        session,
        kind=PROVIDER_CLEANUP_JOB,
        payload={"endpoint": endpoint, "request_id": request_id, "cancel": cancel},
        dedupe_key=f"cleanup:{request_id}",
    )


async def cleanup_provider_request(ctx: JobContext) -> None:
    """Cancel (if it may still run), then delete fal's stored payloads of one request."""
    payload = ctx.job.payload
    endpoint, request_id = str(payload["endpoint"]), str(payload["request_id"])
    gateway = ctx.services.gateway
    try:
        if payload.get("cancel"):
            try:
                outcome = await gateway.cancel(endpoint, request_id)
                logger.info(
                    "fal.request_cancelled",
                    extra={"request_id": request_id, "outcome": str(outcome)},
                )
            except FalPermanentError as exc:
                # Already finished or unknown at fal: the payload deletion still matters.
                logger.info(
                    "fal.cancel_refused", extra={"request_id": request_id, "error": str(exc)}
                )
        deleted = await gateway.delete_payloads(request_id)
    except FalRetriableError as exc:
        raise RetryableJobError(f"fal unavailable: {exc}") from exc
    except FalPermanentError as exc:
        # Payload deletion needs an admin-scoped key at fal; retrying cannot fix that.
        raise PermanentJobError(f"fal refused the payload deletion: {exc}") from exc
    logger.info("fal.payloads_deleted", extra={"request_id": request_id, "deleted": deleted})


CLEANUP_JOB_KINDS = [JobKind(name=PROVIDER_CLEANUP_JOB, handler=cleanup_provider_request)]
