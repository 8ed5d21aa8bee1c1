"""One exception hierarchy for the whole service, rendered as RFC 9457 problem+json.

Services raise subclasses of :class:`AppError`; they never raise ``HTTPException``.
Each subclass carries its HTTP status, a stable machine ``code`` and a short ``title``;
the instance carries the human ``detail``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger("avatar_api.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://avatar-api.dev/problems/"


class FieldError(BaseModel):
    """One invalid input field."""

    loc: list[str | int] = Field(
        description="Where the error is: body, query, path or header, then the field path."
    )
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document; ``code`` is stable and meant for machines."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    type: str = Field(description="URI naming the problem type.")
    title: str
    status: int
    detail: str | None = None
    code: str = Field(description="Stable machine-readable error code.")
    instance: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="Per-field errors, for validation problems."
    )


class AppError(Exception):
    """Base of every error the API answers with on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})

    def extra(self) -> dict[str, Any]:
        """Extension members added to the problem document."""
        return {}


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"
    title = "Bad request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    title = "Missing or invalid credentials"

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="avatar-api"'})


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class UnprocessableEntity(AppError):
    status_code = 422
    code = "unprocessable_entity"
    title = "Unprocessable request"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    title = "Request too large"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    title = "Service unavailable"


_STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Missing or invalid credentials"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    411: ("length_required", "Length required"),
    413: ("payload_too_large", "Request too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Invalid request"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable"),
}


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_CONTENT_TYPE
    )


def _loc(loc: Sequence[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        status=exc.status_code,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        headers=exc.headers,
        extra=exc.extra(),
    )


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": _loc(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    return problem_response(
        status=422,
        code="validation_error",
        title="Invalid request",
        detail="The request does not match the schema: see errors.",
        instance=request.url.path,
        extra={"errors": errors},
    )


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's own answer to an unparsable JSON body: the documented 422 instead.
        return problem_response(
            status=422,
            code="validation_error",
            title="Invalid request",
            detail="The request body is not valid JSON.",
            instance=request.url.path,
            extra={"errors": [{"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}]},
        )
    code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        instance=request.url.path,
        headers=headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's).

    Several routes share a path with different methods (``GET`` and ``PATCH`` on an
    avatar); each is asked, through the public ``matches``, whether it takes the method.
    """
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request.unhandled_error", extra={"path": request.url.path})
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="An unexpected error occurred; it has been logged.",
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry listing the problems a route can answer with."""
    by_status: dict[int, list[type[AppError]]] = {}
    for err in errors:
        by_status.setdefault(err.status_code, []).append(err)
    out: dict[int | str, dict[str, Any]] = {}
    for status, errs in sorted(by_status.items()):
        codes = ", ".join(f"`{e.code}`" for e in errs)
        # `model` registers the Problem schema; the app's OpenAPI hook keeps only the
        # problem+json media type.
        out[status] = {"model": Problem, "description": f"{errs[0].title} ({codes})"}
    return out
