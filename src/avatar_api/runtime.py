"""Background work of one process: the job worker and the training reconciler."""

from __future__ import annotations

import asyncio

from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.registry import JobRegistry
from avatar_api.jobs.worker import Worker
from avatar_api.services import Services
from avatar_api.training.reconciler import run_reconciler


async def run_background(
    services: Services,
    stop: asyncio.Event,
    *,
    concurrency: int | None = None,
    registry: JobRegistry | None = None,
    reconcile: bool = True,
) -> None:
    """Run jobs (of ``registry``, default: every kind) and the reconciler until ``stop``.

    On stop, jobs in flight get AVATAR_SHUTDOWN_GRACE_SECONDS to finish; the rest are
    handed back (due at once, the attempt not counted) for another worker.
    """
    worker = Worker(
        services=services,
        registry=registry if registry is not None else build_registry(),
        concurrency=concurrency,
        shutdown_grace_seconds=services.settings.shutdown_grace_seconds,
    )
    tasks = [worker.run(stop)]
    if reconcile:
        tasks.append(run_reconciler(services, stop))
    await asyncio.gather(*tasks)
