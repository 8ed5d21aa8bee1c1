"""One log line and the metrics of one call to fal, shared by the real adapter and the simulator.

Both log the same event names (``fal.submit``, ``fal.status``, ``fal.result``,
``fal.cancel``, ``fal.delete_payloads``) with ``endpoint``, ``request_id`` (fal's),
``duration_ms`` and ``outcome``; ``backend`` says which one answered.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, ParamSpec, TypeVar

from avatar_api.fal.gateway import (
    CancelOutcome,
    FalCredentialsMissing,
    FalError,
    FalRetriableError,
    FalStatus,
    FalSubmitAmbiguous,
    Submission,
)
from avatar_api.observability.metrics import FAL_CALL_SECONDS, FAL_CALLS

Backend = Literal["fal", "simulator"]
P = ParamSpec("P")
R = TypeVar("R")


def log_fal_call(
    logger: logging.Logger,
    level: int,
    event: str,
    *,
    backend: Backend,
    endpoint: str | None,
    request_id: str | None,
    started: float,
    outcome: str,
    status_code: int | None = None,
    error_type: str | None = None,
    error: str | None = None,
) -> None:
    """Record a finished call; ``started`` is its ``time.perf_counter()`` at the start."""
    seconds = time.perf_counter() - started
    operation = event.removeprefix("fal.")
    FAL_CALLS.labels(backend=backend, operation=operation, outcome=outcome).inc()
    FAL_CALL_SECONDS.labels(backend=backend, operation=operation).observe(seconds)
    fields: dict[str, object | None] = {
        "backend": backend,
        "endpoint": endpoint,
        "request_id": request_id,
        "duration_ms": round(seconds * 1000, 1),
        "outcome": outcome,
        "status_code": status_code,
        "error_type": error_type,
        "error": error,
    }
    logger.log(level, event, extra={k: v for k, v in fields.items() if v is not None})


def error_outcome(exc: FalError) -> str:
    if isinstance(exc, FalCredentialsMissing):
        return "credentials_missing"
    if isinstance(exc, FalSubmitAmbiguous):
        return "ambiguous"
    if isinstance(exc, FalRetriableError):
        return "retriable_error"
    return "permanent_error"


def result_outcome(value: object) -> str:
    """The outcome label of a gateway method's return value."""
    if isinstance(value, Submission):
        return "submitted"
    if isinstance(value, FalStatus):
        return value.state.value
    if isinstance(value, CancelOutcome):
        return value.value
    if isinstance(value, bool):  # delete_payloads
        return "deleted" if value else "not_found"
    return "ok"


def observed_fal_call(
    logger: logging.Logger, event: str, *, backend: Backend
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a gateway method so each call is logged and measured like fal-client's.

    ``endpoint`` and ``request_id`` are read from the call's arguments (``request_id``
    from a :class:`Submission` result for submits).
    """

    def decorate(
        method: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        signature = inspect.signature(method)

        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind_partial(*args, **kwargs).arguments
            endpoint = _text(bound.get("endpoint"))
            request_id = _text(bound.get("request_id"))
            started = time.perf_counter()
            try:
                value = await method(*args, **kwargs)
            except FalError as exc:
                log_fal_call(
                    logger,
                    logging.WARNING,
                    event,
                    backend=backend,
                    endpoint=endpoint,
                    request_id=request_id,
                    started=started,
                    outcome=error_outcome(exc),
                    status_code=exc.status_code,
                    error_type=exc.error_type,
                    error=exc.message,
                )
                raise
            log_fal_call(
                logger,
                logging.INFO,
                event,
                backend=backend,
                endpoint=endpoint,
                request_id=value.request_id if isinstance(value, Submission) else request_id,
                started=started,
                outcome=result_outcome(value),
            )
            return value

        return wrapper

    return decorate


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
