"""The application factory: everything is built from one Settings object."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api import __version__
from avatar_api.auth.service import PrincipalCache
from avatar_api.avatars.router import router as avatars_router
from avatar_api.avatars.router import users_router
from avatar_api.bootstrap import build_services
from avatar_api.db import (
    Reader,
    create_engine,
    create_read_sessionmaker,
    create_sessionmaker,
)
from avatar_api.errors import PROBLEM_CONTENT_TYPE, install_error_handlers
from avatar_api.fal.gateway import TrainerGateway
from avatar_api.fal.simulator import simulator_jwks_url
from avatar_api.fal.simulator_router import router as simulator_router
from avatar_api.fal.webhook_signature import FalWebhookVerifier
from avatar_api.gc_tuning import tune_after_startup
from avatar_api.generations.router import router as generations_router
from avatar_api.generations.router import webhook_router as generation_webhook_router
from avatar_api.health.router import router as health_router
from avatar_api.nul_guard import NulGuard
from avatar_api.observability import install_observability
from avatar_api.observability.router import router as metrics_router
from avatar_api.photos.router import router as photos_router
from avatar_api.photos.upload import DiskBudget
from avatar_api.rate_limit import RateLimiter
from avatar_api.runtime import run_background
from avatar_api.settings import Settings
from avatar_api.storage.base import ObjectStorage
from avatar_api.storage.router import router as files_router
from avatar_api.trainers.router import router as training_types_router
from avatar_api.training.router import router as training_router
from avatar_api.webhooks.fal_router import router as fal_webhook_router
from avatar_api.webhooks.router import router as webhook_endpoints_router

logger = logging.getLogger("avatar_api")

DESCRIPTION = """\
Train a personal AI avatar (a FLUX LoRA on fal.ai) from 10-20 photos and generate images with it.

Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457
`application/problem+json` documents with a stable `code`.
"""


def create_app(
    settings: Settings,
    *,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    gateway: TrainerGateway | None = None,
    storage: ObjectStorage | None = None,
    http: httpx.AsyncClient | None = None,
    tune_gc: bool = False,
) -> FastAPI:
    """Build the app; tests pass their own sessionmaker, gateway, storage or HTTP client.

    ``tune_gc`` (the served app, see ``main``) freezes what start-up built once the lifespan
    starts (:mod:`avatar_api.gc_tuning`); not for apps built and dropped in one process.
    """
    settings.check_production_safety()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        if tune_gc:
            tune_after_startup()
        background = None
        if settings.embedded_worker:
            background = asyncio.create_task(run_background(services, stop), name="worker")
            logger.info("worker.embedded_started")
        try:
            yield
        finally:
            app.state.draining = True
            stop.set()
            if background is not None:
                await background
            if app.state.rate_limiter is not None:
                await app.state.rate_limiter.aclose()
            await services.aclose()
            await app.state.engine.dispose()

    app = FastAPI(
        title="Avatar API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        separate_input_output_schemas=False,
    )
    engine = create_engine(settings)
    sessionmaker = sessionmaker or create_sessionmaker(engine)
    services = build_services(settings, sessionmaker, http=http, gateway=gateway, storage=storage)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = sessionmaker
    app.state.read_sessionmaker = create_read_sessionmaker(sessionmaker)
    app.state.reader = Reader(app.state.read_sessionmaker)
    app.state.principal_cache = PrincipalCache(settings.auth_cache_seconds)
    app.state.rate_limiter = (
        RateLimiter(
            limit=settings.rate_limit_per_minute, sessionmaker=sessionmaker, clock=services.clock
        )
        if settings.rate_limit_per_minute > 0
        else None
    )
    app.state.services = services
    app.state.storage = services.storage
    app.state.upload_semaphore = asyncio.Semaphore(settings.upload_concurrency)
    app.state.upload_disk_budget = DiskBudget(settings.upload_temp_budget_bytes)
    app.state.fal_verifier = FalWebhookVerifier(
        simulator_jwks_url(settings) if settings.effective_test_mode else settings.fal_jwks_url,
        http=services.http,
        tolerance_seconds=settings.fal_webhook_tolerance_seconds,
    )
    app.state.draining = False

    install_error_handlers(app)
    app.add_middleware(NulGuard)
    install_observability(app, settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(avatars_router)
    app.include_router(users_router)
    app.include_router(training_types_router)
    app.include_router(photos_router)
    app.include_router(training_router)
    app.include_router(webhook_endpoints_router)
    app.include_router(generations_router)
    app.include_router(generation_webhook_router)
    app.include_router(fal_webhook_router)
    app.include_router(files_router)
    if settings.effective_test_mode:
        app.include_router(simulator_router)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error described as problem+json only."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        separate_input_output_schemas=False,
    )
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            if operation.get("security"):
                # Every authenticated call counts against the API key's rate limit.
                operation["responses"].setdefault(
                    "429",
                    {
                        "description": "Too many requests (`rate_limited`); see Retry-After",
                        "content": {PROBLEM_CONTENT_TYPE: problem},
                    },
                )
            for status, response in operation.get("responses", {}).items():
                if status == "422":
                    response["description"] = "Invalid request (`validation_error`)"
                    response["content"] = {PROBLEM_CONTENT_TYPE: problem}
                elif status.startswith(("4", "5")):
                    response["content"] = {PROBLEM_CONTENT_TYPE: problem}
    schemas = doc.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc
