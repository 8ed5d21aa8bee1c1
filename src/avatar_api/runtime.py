"""Background work of one process: the job worker and the training reconciler."""

from __future__ import annotations

import asyncio

from avatar_api.jobs.kinds import build_registry
from avatar_api.jobs.worker import Worker
from avatar_api.services import Services
from avatar_api.training.reconciler import run_reconciler


async def run_background(
    services: Services, stop: asyncio.Event, *, concurrency: int | None = None
) -> None:
    worker = Worker(services=services, registry=build_registry(), concurrency=concurrency)
    await asyncio.gather(worker.run(stop), run_reconciler(services, stop))
