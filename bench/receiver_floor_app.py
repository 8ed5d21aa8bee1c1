"""A reference point for the webhooks benchmark: our app, with a receiver that does nothing.

The deployed app (``avatar_api.main``: same settings, middleware, routers, logging) with one
route put in front of the fal webhook receiver, on the same path: it reads the body and
answers as the receiver does, without checking the signature or storing anything. What it
costs is what our stack costs before any of the work that bar 2 measures.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.routing import APIRoute

from avatar_api.main import app


async def receive_nothing(training_id: uuid.UUID, token: str, request: Request) -> dict[str, str]:
    await request.body()
    return {"status": "accepted"}


# Routes match in order: this one answers before the real receiver is reached.
app.router.routes.insert(
    0, APIRoute("/v1/webhooks/fal/{training_id}/{token}", receive_nothing, methods=["POST"])
)
