"""ASGI entry point for uvicorn: settings from the environment."""

from avatar_api.app import create_app
from avatar_api.logging_setup import configure_logging
from avatar_api.settings import Settings

settings = Settings()
configure_logging(level=settings.log_level, fmt=settings.resolved_log_format)
app = create_app(settings, tune_gc=True)
