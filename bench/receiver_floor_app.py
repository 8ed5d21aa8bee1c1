"""A reference point for the webhooks benchmark: our app, with a receiver that does nothing.

The deployed app (``avatar_api.main``: same settings, middleware, routers, logging) with the
fal webhook receiver's route swapped, in its own router and place, for one with the same
path, parameters and response model that reads the body and answers at once, without
checking the signature or storing anything. What it costs is what our stack (routing
included) costs before any of the work that bar 2 measures.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Path, Request
from fastapi.routing import APIRoute

from avatar_api.webhooks import fal_router
from avatar_api.webhooks.fal_router import WebhookAck

RECEIVER_PATH = "/v1/webhooks/fal/{training_id}/{token}"


async def receive_nothing(
    training_id: uuid.UUID, token: Annotated[str, Path(max_length=128)], request: Request
) -> WebhookAck:
    await request.body()
    return WebhookAck(status="accepted")


def _swap_receiver() -> None:
    routes = fal_router.router.routes
    for index, route in enumerate(routes):
        if isinstance(route, APIRoute) and route.path == RECEIVER_PATH:
            routes[index] = APIRoute(RECEIVER_PATH, receive_nothing, methods=["POST"])
            return
    raise RuntimeError(f"no route {RECEIVER_PATH} in avatar_api.webhooks.fal_router")


_swap_receiver()  # before the app is built: it includes the router as it is now

from avatar_api.main import app  # noqa: E402

__all__ = ["app"]
