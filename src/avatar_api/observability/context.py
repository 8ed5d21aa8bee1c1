"""What is known about the HTTP request being served, for logs and response headers.

The middleware puts one mutable :class:`RequestContext` into a context variable per
request; code further in (the auth dependency) fills it in. A mutable object rather than
several context variables: FastAPI may run parts of a request in copied contexts (sync
dependencies in a thread), and a value set there would not travel back out, while a
change to a shared object does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    request_id: str
    tenant_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    # Added to the response by the middleware unless the response already has them.
    response_headers: dict[str, str] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("avatar_api_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def exit_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def bind_principal(*, tenant_id: uuid.UUID, api_key_id: uuid.UUID) -> None:
    """Record who is calling; every later log line of the request carries ``tenant_id``."""
    context = _current.get()
    if context is not None:
        context.tenant_id = tenant_id
        context.api_key_id = api_key_id


def add_response_headers(headers: Mapping[str, str]) -> None:
    context = _current.get()
    if context is not None:
        context.response_headers.update(headers)
