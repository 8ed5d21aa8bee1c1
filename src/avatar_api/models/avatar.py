from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Column, Field, SQLModel

from avatar_api.db import UTCDateTime, utcnow
from avatar_api.models.base import created_at_field, enum_column_type, id_field, tenant_fk


class TrainingType(StrEnum):
    portrait = "portrait"
    style = "style"


class Gender(StrEnum):
    male = "male"
    female = "female"
    unspecified = "unspecified"


class AvatarStatus(StrEnum):
    draft = "draft"
    queued = "queued"
    training = "training"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class Avatar(SQLModel, table=True):
    __tablename__ = "avatars"
    __table_args__ = (
        # Newest-first listing per tenant with a (created_at, id) cursor.
        Index("ix_avatars_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_avatars_tenant_external_user", "tenant_id", "external_user_id"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    name: str = Field(max_length=100)
    training_type: TrainingType = Field(sa_type=enum_column_type(TrainingType))
    gender: Gender = Field(default=Gender.unspecified, sa_type=enum_column_type(Gender))
    external_user_id: str | None = Field(default=None, max_length=128)
    trigger_phrase: str = Field(max_length=64)
    user_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    status: AvatarStatus = Field(default=AvatarStatus.draft, sa_type=enum_column_type(AvatarStatus))
    created_at: datetime = created_at_field()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
