"""How ``avatar-api serve`` starts and stops.

What happens on SIGTERM (or the first Ctrl-C):

1. At once, ``GET /readyz`` starts answering 503 (``app.state.draining``), so a load
   balancer polling it stops sending new traffic.
2. With ``AVATAR_SHUTDOWN_DRAIN_DELAY_SECONDS`` > 0 the server keeps accepting and serving
   for that long, to give the load balancer time to notice. A second signal skips the wait.
3. uvicorn closes its listening sockets (new connections are refused), closes idle
   keep-alive connections and waits for the requests in flight, up to
   ``AVATAR_SHUTDOWN_GRACE_SECONDS``; requests still running then are cancelled.
4. uvicorn then runs the app's lifespan shutdown: the embedded worker (if any) stops
   claiming, its jobs in flight get the worker's grace period to finish, and the rest are
   handed back (made due at once, the interrupted attempt not counted) so another worker
   runs them without waiting for their lease to expire. Database connections are closed.
5. uvicorn re-raises the signal once it is done, so the process ends as killed by SIGTERM
   (exit status 143 in a shell), which is uvicorn's way of reporting a signalled stop.

Without step 1, readiness would only flip in step 4, after the sockets are already
closed: uvicorn runs the lifespan shutdown last. Steps 1 and 2 need ``--workers 1`` (the
intended deployment: one process per container, more containers to scale); with several
uvicorn workers, uvicorn's supervisor runs its own servers and readiness flips in step 4.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import FrameType

import uvicorn
from uvicorn.importer import import_from_string

from avatar_api.settings import Settings

logger = logging.getLogger("avatar_api")

APP = "avatar_api.main:app"
STARTUP_FAILURE = 3


def mark_draining(app: object) -> None:
    """Make ``GET /readyz`` fail from now on."""
    if isinstance(app, str):
        app = import_from_string(app)  # already imported by uvicorn: a lookup, no import
    state = getattr(app, "state", None)
    if state is not None:
        state.draining = True


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with readiness flipped the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, *, drain_delay_seconds: float = 0.0) -> None:
        super().__init__(config)
        self.drain_delay_seconds = drain_delay_seconds
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_timer is not None:
            # A second signal while draining: stop accepting now.
            self._drain_timer.cancel()
        elif not self.should_exit:
            mark_draining(self.config.app)
            logger.info(
                "server.draining",
                extra={"signal": sig, "drain_delay_seconds": self.drain_delay_seconds},
            )
            if self.drain_delay_seconds > 0:
                self._drain_timer = threading.Timer(
                    self.drain_delay_seconds, super().handle_exit, args=(sig, frame)
                )
                self._drain_timer.daemon = True
                self._drain_timer.start()
                return
        super().handle_exit(sig, frame)


def serve(
    settings: Settings, *, host: str, port: int, workers: int, forwarded_allow_ips: str
) -> int:
    """Run the API until a stop signal; the exit code for the CLI."""
    if settings.metrics_port is not None:
        if workers > 1:
            print(
                "AVATAR_METRICS_PORT serves one process's metrics: use --workers 1 (run more "
                "containers to scale out), or scrape GET /metrics with AVATAR_METRICS_TOKEN.",
                file=sys.stderr,
            )
            return 2
        from avatar_api.observability.exporter import start_metrics_server

        start_metrics_server(settings)
    config = uvicorn.Config(
        APP,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        log_config=None,
        # The app logs one http.request line per request itself (with the route template,
        # never the raw path, whose query may hold a signed URL's signature).
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
    )
    if config.workers > 1:
        # uvicorn's supervisor builds plain servers in its child processes: steps 1-2 above
        # do not apply, readiness flips in the lifespan shutdown (step 4).
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    server = DrainingServer(config, drain_delay_seconds=settings.shutdown_drain_delay_seconds)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
