"""Asking fal where a request stands, shared by the training and generation pollers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avatar_api.fal.gateway import (
    FalCredentialsMissing,
    FalPermanentError,
    FalRetriableError,
    FalState,
    FalStatus,
    TrainerGateway,
)
from avatar_api.jobs.errors import RetryableJobError


class FalRequestGone(Exception):
    """fal no longer knows the request, or its result is gone (fal keeps it about an hour):
    asking again cannot change the answer."""


@dataclass(frozen=True)
class FalOutcome:
    status: FalStatus
    output: Mapping[str, Any] | None  # fal's result, once the request completed without error


async def fetch_outcome(gateway: TrainerGateway, endpoint: str, request_id: str) -> FalOutcome:
    """The request's status, and its result once it completed.

    Raises :class:`RetryableJobError` when fal cannot answer now, or refuses our
    credentials (our key's fault, not the request's: the row is kept and the job retried),
    and :class:`FalRequestGone` when no answer will ever come.
    """
    try:
        status = await gateway.status(endpoint, request_id)
        output = None
        if status.state is FalState.COMPLETED and not status.failed:
            output = await gateway.result(endpoint, request_id)
    except FalRetriableError as exc:
        raise RetryableJobError(f"fal status unavailable: {exc}") from exc
    except FalPermanentError as exc:
        if isinstance(exc, FalCredentialsMissing) or exc.status_code in (401, 403):
            raise RetryableJobError(f"fal refused our credentials: {exc}") from exc
        raise FalRequestGone(str(exc)) from exc
    return FalOutcome(status=status, output=output)
