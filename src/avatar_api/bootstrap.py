"""Builds the process-wide collaborators (storage, trainer gateway, HTTP client) from settings."""

from __future__ import annotations

import logging

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.fal.gateway import TrainerGateway
from avatar_api.services import Services
from avatar_api.settings import Settings
from avatar_api.storage.base import ObjectStorage

logger = logging.getLogger("avatar_api")


def build_storage(settings: Settings) -> ObjectStorage:
    if settings.storage_backend == "s3":
        from avatar_api.storage.s3 import S3Storage

        secret = settings.s3_secret_access_key
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            path_style=settings.s3_path_style,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    from avatar_api.storage.local import LocalStorage

    return LocalStorage(
        settings.storage_local_root,
        public_base_url=settings.public_base_url,
        signing_secret=settings.secret_key.get_secret_value().encode(),
    )


def build_gateway(
    settings: Settings,
    http: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
) -> TrainerGateway:
    if settings.effective_test_mode:
        from avatar_api.fal.simulator import SimulatorGateway

        logger.warning(
            "service.test_mode",
            extra={"detail": "TEST MODE: trainings run on the built-in fal simulator, not fal.ai"},
        )
        return SimulatorGateway(settings=settings, sessionmaker=sessionmaker, storage=storage)
    from avatar_api.fal.client import FalClientGateway

    key = settings.fal_key.get_secret_value() if settings.fal_key else None
    return FalClientGateway(
        key,
        http_client=http,
        timeout=settings.fal_timeout_seconds,
        rest_base_url=settings.fal_rest_base_url,
    )


def build_services(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    http: httpx.AsyncClient | None = None,
    gateway: TrainerGateway | None = None,
    storage: ObjectStorage | None = None,
) -> Services:
    """Everything a request or a job needs; tests pass their own gateway/storage/http."""
    http = http or httpx.AsyncClient(
        timeout=httpx.Timeout(15.0), follow_redirects=False, headers={"User-Agent": "avatar-api"}
    )
    storage = storage or build_storage(settings)
    return Services(
        settings=settings,
        sessionmaker=sessionmaker,
        storage=storage,
        gateway=gateway or build_gateway(settings, http, sessionmaker, storage),
        http=http,
    )
