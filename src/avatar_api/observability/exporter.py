"""The separate metrics port (``AVATAR_METRICS_PORT``) of ``avatar-api serve`` and ``worker``.

prometheus-client's own HTTP server, in a daemon thread, without authentication: expose
the port only to the network Prometheus scrapes from (``AVATAR_METRICS_HOST`` defaults to
loopback). Workers have no HTTP API, so this is how their job and fal metrics are read.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from avatar_api.observability.collector import StandaloneDatabaseCollector
from avatar_api.observability.metrics import build_registry
from avatar_api.settings import Settings

logger = logging.getLogger("avatar_api.metrics")


def start_metrics_server(settings: Settings, *, port: int | None = None) -> WSGIServer:
    """Serve this process's metrics and the database's on ``port`` (default: the setting).

    Stop it with ``server.shutdown()``; ``port=0`` picks a free port (``server.server_port``).
    """
    chosen = settings.metrics_port if port is None else port
    if chosen is None:
        raise ValueError("no metrics port: set AVATAR_METRICS_PORT")
    registry = build_registry(StandaloneDatabaseCollector(settings))
    server, _ = start_http_server(chosen, addr=settings.metrics_host, registry=registry)
    logger.info(
        "metrics.server_started", extra={"host": settings.metrics_host, "port": server.server_port}
    )
    return server
