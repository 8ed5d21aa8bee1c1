"""The trainer gateway port: what the service needs from fal.ai's queue, and nothing more.

Adapters: :class:`avatar_api.fal.client.FalClientGateway` (real fal over fal-client) and the
simulator used in test mode. Job handlers depend on :class:`TrainerGateway` only, so both
adapters must raise exactly the errors defined here and never an HTTP library's exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class FalState(StrEnum):
    """Queue states as fal reports them. There is no FAILED: see :attr:`FalStatus.failed`."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelOutcome(StrEnum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class Submission:
    request_id: str


@dataclass(frozen=True)
class FalStatus:
    state: FalState
    queue_position: int | None = None
    logs: list[str] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None

    @property
    def failed(self) -> bool:
        """fal reports a failure as COMPLETED carrying an error."""
        return self.state is FalState.COMPLETED and (
            self.error is not None or self.error_type is not None
        )


class FalError(Exception):
    """Base of every error a :class:`TrainerGateway` raises.

    Adapters raise one of the two families below, never this class itself: callers decide
    between "try again later" and "give up" by catching :class:`FalRetriableError` or
    :class:`FalPermanentError`.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"error_type={self.error_type!r})"
        )


class FalRetriableError(FalError):
    """The call may succeed later: timeouts, connection errors, 408/409/429 and 5xx."""


class FalPermanentError(FalError):
    """Repeating the same call cannot succeed: bad input (422), bad key, unknown request."""


class FalSubmitAmbiguous(FalRetriableError):
    """A submit may or may not have created a (billed) job at fal.

    The request could have reached fal before the failure (read timeout, connection reset
    after sending, 5xx from the gateway, unreadable 2xx). fal has no idempotency key, so the
    caller must reconcile (for example wait for a webhook carrying its per-training token)
    instead of submitting again.
    """


class FalCredentialsMissing(FalPermanentError):
    """No fal key is configured; no request was sent."""


class TrainerGateway(Protocol):
    """fal's queue API as the service uses it.

    ``endpoint`` is always the full endpoint id given at submit time, sub-path included
    (``fal-ai/flux-pro/v1.1-ultra-finetuned``); adapters know which part of it fal's
    status, result and cancel URLs use. Every method raises :class:`FalRetriableError`
    or :class:`FalPermanentError` (or a subclass) on failure.
    """

    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        """Queue one request and return its id.

        Not idempotent: each successful call is a separate billed job. On
        :class:`FalSubmitAmbiguous` the job may exist; reconcile before calling again.
        ``webhook_url`` is where fal POSTs the outcome (``None``: poll only).
        ``store_io=False`` asks fal to keep no copy of the input and output.
        """
        ...

    async def status(self, endpoint: str, request_id: str) -> FalStatus:
        """Current queue state with the logs so far.

        A failed request is ``COMPLETED`` with ``error``/``error_type`` set.
        """
        ...

    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        """The output of a request; only valid once :meth:`status` said ``COMPLETED``.

        Never waits for completion. fal keeps results for about an hour.
        """
        ...

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        """Ask fal to cancel a queued or running request.

        ``CANCELLATION_REQUESTED`` is a request, not a confirmation: the request can still
        complete, so the final state comes from :meth:`status` or the webhook.
        """
        ...

    async def delete_payloads(self, request_id: str) -> bool:
        """Erase the input/output payloads fal stored for a request.

        Returns ``True`` when fal deleted them and ``False`` when it had none to delete
        (already gone, or submitted with ``store_io=False``).
        """
        ...
