from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Text
from sqlmodel import Column, Field, SQLModel

from avatar_api.db import UTCDateTime, utcnow
from avatar_api.models.base import created_at_field, enum_column_type, id_field, tenant_fk

WEBHOOK_URL_MAX_LENGTH = 2048
EVENT_TYPE_MAX_LENGTH = 64


class WebhookDeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class WebhookEndpoint(SQLModel, table=True):
    """A caller's URL that receives our events, signed with Standard Webhooks.

    ``encrypted_secret`` holds the ``whsec_`` signing secret encrypted with a key derived
    from ``AVATAR_SECRET_KEY`` (see ``webhooks.signing``): it must be recoverable to sign,
    but a leaked database dump alone must not let anyone forge our webhooks.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        # Newest-first listing per tenant with a (created_at, id) cursor.
        Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    url: str = Field(max_length=WEBHOOK_URL_MAX_LENGTH)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    encrypted_secret: str = Field(sa_type=Text)
    enabled: bool = Field(default=True)
    disabled_reason: str | None = Field(default=None, max_length=200)
    created_at: datetime = created_at_field()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint, and how its delivery went.

    ``event_id`` is the ``webhook-id`` header: the same on every retry of the event (and for
    every endpoint that receives it), so receivers can deduplicate.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The delivery log of one endpoint, newest first, with a (created_at, id) cursor.
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    endpoint_id: uuid.UUID = Field(
        foreign_key="webhook_endpoints.id", nullable=False, ondelete="CASCADE"
    )
    event_id: str = Field(max_length=64)
    event_type: str = Field(max_length=EVENT_TYPE_MAX_LENGTH)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: WebhookDeliveryStatus = Field(
        default=WebhookDeliveryStatus.pending, sa_type=enum_column_type(WebhookDeliveryStatus)
    )
    attempts: int = Field(default=0)
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, sa_type=Text)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
