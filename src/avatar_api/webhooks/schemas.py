from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from avatar_api.models import WebhookDeliveryStatus
from avatar_api.models.webhook import WEBHOOK_URL_MAX_LENGTH
from avatar_api.webhooks.events import WebhookEventType

WebhookUrl = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=WEBHOOK_URL_MAX_LENGTH),
    Field(
        description="Where events are POSTed: an http(s) URL without credentials whose host "
        "resolves only to public internet addresses.",
        examples=["https://example.com/hooks/avatar-api"],
    ),
]
EventTypes = Annotated[
    list[WebhookEventType],
    Field(
        min_length=1,
        max_length=2 * len(WebhookEventType),
        description="Event types to receive. `webhook.test` is sent by the test route "
        "whether listed or not.",
        examples=[["avatar.training.completed", "avatar.training.failed"]],
    ),
]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    events: EventTypes


class WebhookEndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool = Field(description="False once the endpoint answered 410 Gone.")
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(
        description="The Standard Webhooks signing secret (`whsec_...`). Shown only in this "
        "response: store it to verify the `webhook-signature` header.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookDeliveryRead(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    event_type: str
    payload: dict[str, Any] = Field(description="The JSON body sent.")
    status: WebhookDeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt.")
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    created_at: datetime
    delivered_at: datetime | None


class WebhookEndpointPage(BaseModel):
    items: list[WebhookEndpointRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
