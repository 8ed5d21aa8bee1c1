"""``GET /metrics``: Prometheus text format, for the holder of ``AVATAR_METRICS_TOKEN`` only.

Without the setting the route answers 404, as if it did not exist. Tenants' API keys never
open it: the only accepted credential is the metrics token. Out of the OpenAPI document.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.errors import NotFound, Unauthorized
from avatar_api.observability.collector import DatabaseCollector
from avatar_api.settings import Settings, UnsafeConfiguration

router = APIRouter(include_in_schema=False)

MIN_PRODUCTION_TOKEN_CHARS = 24


def check_metrics_token(settings: Settings) -> None:
    """Refuse a guessable metrics token in production (it guards every tenant's numbers)."""
    token = settings.metrics_token
    if settings.is_production and token is not None:
        value = token.get_secret_value()
        if value and len(value) < MIN_PRODUCTION_TOKEN_CHARS:
            raise UnsafeConfiguration(
                f"AVATAR_METRICS_TOKEN is shorter than {MIN_PRODUCTION_TOKEN_CHARS} characters: "
                'set a random value, e.g. python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"'
            )


async def require_metrics_token(request: Request) -> None:
    settings: Settings = request.app.state.settings
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not expected:
        raise NotFound("Not Found")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credentials.strip().encode(), expected.encode()
    ):
        raise Unauthorized("Send the metrics token as 'Authorization: Bearer <token>'.")


async def render_metrics(
    *,
    registry: CollectorRegistry,
    collector: DatabaseCollector,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> bytes:
    await collector.refresh(sessionmaker)
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, _: Annotated[None, Depends(require_metrics_token)]) -> Response:
    """Prometheus metrics of this process, and of the database at scrape time."""
    state = request.app.state
    body = await render_metrics(
        registry=state.metrics_registry,
        collector=state.metrics_collector,
        sessionmaker=state.sessionmaker,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
