"""Operations: request ids and access logs, Prometheus metrics, the /metrics endpoint.

Kept light on purpose: ``context`` and ``metrics`` are imported by low-level modules
(logging, the training state machine), so this package's ``__init__`` imports nothing
heavy at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from avatar_api.settings import Settings


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Request ids, access log and HTTP metrics around ``app``; secrets kept out of logs.

    The request-context middleware wraps the whole middleware stack, Starlette's
    ``ServerErrorMiddleware`` included, so that even a 500 answered by the unhandled-error
    handler carries ``X-Request-ID`` and is counted and logged once. Mount
    :data:`avatar_api.observability.router.router` for ``GET /metrics``.
    """
    from avatar_api.logging_setup import register_secrets
    from avatar_api.observability.collector import DatabaseCollector
    from avatar_api.observability.metrics import build_app_registry
    from avatar_api.observability.middleware import RequestContextMiddleware
    from avatar_api.observability.router import check_metrics_token

    check_metrics_token(settings)
    register_secrets(settings)
    collector = DatabaseCollector()
    app.state.metrics_collector = collector
    app.state.metrics_registry = build_app_registry(collector)

    build_stack = app.build_middleware_stack

    def build_with_request_context() -> RequestContextMiddleware:
        return RequestContextMiddleware(build_stack())

    app.build_middleware_stack = build_with_request_context  # type: ignore[method-assign]
