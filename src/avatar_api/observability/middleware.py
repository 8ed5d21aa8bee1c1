"""Request ids, one access-log line and the HTTP metrics of every request.

Pure ASGI (not ``BaseHTTPMiddleware``): it only watches ``http.response.start`` go by, so
streamed uploads and downloads pass through unbuffered.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avatar_api.observability.context import RequestContext, enter_request, exit_request
from avatar_api.observability.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

logger = logging.getLogger("avatar_api.http")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED_ROUTE = "unmatched"
# Polled every few seconds by orchestrators and Prometheus: their successful answers are
# logged at DEBUG so they do not drown the access log.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer"


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID`` when it is a sane token, else ``None``."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.fullmatch(text) else None
    return None


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/avatars/{avatar_id}``), never the raw path."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(request_id=incoming_request_id(scope) or uuid.uuid4().hex)
        token = enter_request(context)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = context.request_id
                for name, value in context.response_headers.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            status = status or 500
            raise
        except BaseException:  # cancelled: the client disconnected or the server stops
            status = status or CLIENT_CLOSED
            raise
        finally:
            self._record(scope, context, status or CLIENT_CLOSED, started)
            exit_request(token)

    @staticmethod
    def _record(scope: Scope, context: RequestContext, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        method = str(scope.get("method", ""))
        route = route_template(scope)
        HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
        HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(seconds)
        if status >= 500:
            level = logging.WARNING
        elif route in QUIET_ROUTES and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        logger.log(
            level,
            "http.request",
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "request_id": context.request_id,
                "tenant_id": str(context.tenant_id) if context.tenant_id else None,
            },
        )
