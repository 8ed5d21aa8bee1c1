"""The baseline server: bare FastAPI routes shaped like ours, doing no work.

Same paths and path-parameter types as the routes under test, so wrk sends the very same
requests to both; served by the same uvicorn settings.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/avatars/{avatar_id}")
async def get_avatar(avatar_id: uuid.UUID) -> dict[str, str]:
    return {"id": str(avatar_id), "name": "Bare", "status": "draft"}


@app.post("/v1/webhooks/fal/{training_id}/{token}")
async def fal_webhook(training_id: uuid.UUID, token: str, request: Request) -> dict[str, str]:
    await request.body()
    return {"status": "accepted"}
