from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from avatar_api.db import UTCDateTime, utcnow
from avatar_api.models.base import created_at_field, enum_column_type, id_field, tenant_fk


class TrainingStatus(StrEnum):
    queued = "queued"
    # The submission to fal has been attempted and its outcome is not known yet.
    submitting = "submitting"
    in_queue = "in_queue"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


def _ts() -> datetime | None:
    field: datetime | None = Field(default=None, sa_type=UTCDateTime)
    return field


class Training(SQLModel, table=True):
    """One training attempt of an avatar; an avatar may have several (after a failure)."""

    __tablename__ = "trainings"
    __table_args__ = (
        UniqueConstraint("avatar_id", "attempt", name="uq_trainings_avatar_attempt"),
        Index("ix_trainings_status_checked", "status", "last_checked_at"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    avatar_id: uuid.UUID = Field(foreign_key="avatars.id", nullable=False, ondelete="CASCADE")
    attempt: int
    status: TrainingStatus = Field(
        default=TrainingStatus.queued, sa_type=enum_column_type(TrainingStatus)
    )
    preset: str | None = Field(default=None, max_length=16)
    overrides: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fal_input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    endpoint: str = Field(max_length=128)
    test_mode: bool
    photo_count: int = 0
    archive_key: str | None = Field(default=None, max_length=512)
    request_id: str | None = Field(default=None, max_length=128, unique=True)
    queue_position: int | None = None
    progress_steps: int | None = None
    progress_total: int | None = None
    logs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lora_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lora_size: int | None = None
    config_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    finetune_id: str | None = Field(default=None, max_length=128)
    # Our own copies of the result files (fal's CDN URLs expire).
    lora_key: str | None = Field(default=None, max_length=512)
    config_key: str | None = Field(default=None, max_length=512)
    result_copied_at: datetime | None = _ts()
    result_copy_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = created_at_field()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    submit_started_at: datetime | None = _ts()
    submitted_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    last_checked_at: datetime | None = _ts()


class IdempotencyKey(SQLModel, table=True):
    """A client's Idempotency-Key and the response it got, per tenant and operation."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "scope", "key", name="uq_idempotency_tenant_scope_key"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    scope: str = Field(max_length=200)
    key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    completed: bool = False
    response_status: int | None = None
    response_body: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    created_at: datetime = created_at_field()


class FalWebhookEvent(SQLModel, table=True):
    """A verified webhook from fal, stored once (fal delivers at least once)."""

    __tablename__ = "fal_webhook_events"
    __table_args__ = (
        UniqueConstraint("request_id", "body_sha256", name="uq_fal_events_request_body"),
    )

    id: uuid.UUID = id_field()
    training_id: uuid.UUID = Field(foreign_key="trainings.id", nullable=False, ondelete="CASCADE")
    request_id: str = Field(max_length=128, index=True)
    body_sha256: str = Field(max_length=64)
    status: str = Field(max_length=16)
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: datetime = created_at_field()
    applied_at: datetime | None = _ts()


class SimulatedRequest(SQLModel, table=True):
    """Test mode only: the simulator's own record of a request, as fal would keep it."""

    __tablename__ = "simulated_requests"

    request_id: str = Field(primary_key=True, max_length=64)
    endpoint: str = Field(max_length=128)
    arguments: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    webhook_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    submitted_at: datetime = created_at_field()
    queue_seconds: float
    train_seconds: float
    total_steps: int
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    cancelled_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
