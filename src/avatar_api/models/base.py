from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field

from avatar_api.db import UTCDateTime, utcnow


# sqlmodel.Field is typed as returning Any; the annotated locals keep mypy --strict honest.
def id_field() -> uuid.UUID:
    field: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    return field


def created_at_field() -> datetime:
    field: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    return field


def tenant_fk() -> uuid.UUID:
    field: uuid.UUID = Field(
        foreign_key="tenants.id", index=True, nullable=False, ondelete="CASCADE"
    )
    return field


def enum_column_type(enum: type[StrEnum]) -> sa.Enum:
    """Store a StrEnum as its plain string value (no native DB enum to migrate)."""
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )
