from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from avatar_api.dependencies import SessionDep, SettingsDep
from avatar_api.errors import problem_responses
from avatar_api.webhooks.fal_service import (
    FalWebhookRejected,
    FalWebhookTooLarge,
    JwksUnreachable,
    read_capped,
    receive_fal_webhook,
)

router = APIRouter(tags=["fal webhooks"])


class WebhookAck(BaseModel):
    status: str


@router.post(
    "/v1/webhooks/fal/{training_id}/{token}",
    operation_id="receive_fal_webhook",
    responses=problem_responses(FalWebhookRejected, FalWebhookTooLarge, JwksUnreachable),
)
async def receive_fal_webhook_route(
    training_id: uuid.UUID,
    token: Annotated[str, Path(max_length=128)],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> WebhookAck:
    """Receive fal's signed webhook for a training (called by fal, not by API clients)."""
    body = await read_capped(request.stream())
    stored = await receive_fal_webhook(
        session,
        settings=settings,
        verifier=request.app.state.fal_verifier,
        training_id=training_id,
        token=token,
        headers=request.headers,
        body=body,
    )
    return WebhookAck(status="accepted" if stored else "duplicate")
