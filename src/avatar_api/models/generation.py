from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from avatar_api.db import UTCDateTime, utcnow
from avatar_api.models.base import created_at_field, enum_column_type, id_field, tenant_fk


class GenerationStatus(StrEnum):
    queued = "queued"
    submitting = "submitting"
    in_queue = "in_queue"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class Generation(SQLModel, table=True):
    """Images generated with a trained avatar (one fal inference request)."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_avatar_created", "avatar_id", "created_at", "id"),
        Index("ix_generations_status_checked", "status", "last_checked_at"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    avatar_id: uuid.UUID = Field(foreign_key="avatars.id", nullable=False, ondelete="CASCADE")
    training_id: uuid.UUID = Field(foreign_key="trainings.id", nullable=False, ondelete="CASCADE")
    status: GenerationStatus = Field(
        default=GenerationStatus.queued, sa_type=enum_column_type(GenerationStatus)
    )
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    final_prompt: str = Field(sa_column=Column(Text, nullable=False))
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    endpoint: str = Field(max_length=128)
    fal_input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    test_mode: bool
    request_id: str | None = Field(default=None, max_length=128, unique=True)
    images: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # fal seeds are unsigned 32-bit: past PostgreSQL's INTEGER.
    seed: int | None = Field(default=None, sa_type=BigInteger)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = created_at_field()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    submit_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_checked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class GenerationWebhookEvent(SQLModel, table=True):
    """A verified fal webhook about a generation, stored once (fal delivers at least once)."""

    __tablename__ = "generation_webhook_events"
    __table_args__ = (
        UniqueConstraint("request_id", "body_sha256", name="uq_generation_events_request_body"),
    )

    id: uuid.UUID = id_field()
    generation_id: uuid.UUID = Field(
        foreign_key="generations.id", nullable=False, ondelete="CASCADE", index=True
    )
    request_id: str = Field(max_length=128, index=True)
    body_sha256: str = Field(max_length=64)
    status: str = Field(max_length=16)
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: datetime = created_at_field()
    applied_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
