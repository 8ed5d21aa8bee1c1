from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from avatar_api.db import UTCDateTime


class RateLimitWindow(SQLModel, table=True):
    """Requests one API key made in one fixed one-minute window.

    Shared by every API process through the database; each key keeps at most its current
    and previous window (older ones are deleted when a new window opens).
    """

    __tablename__ = "rate_limit_windows"

    key_id: uuid.UUID = Field(
        foreign_key="api_keys.id", primary_key=True, ondelete="CASCADE", nullable=False
    )
    window_start: datetime = Field(sa_type=UTCDateTime, primary_key=True, nullable=False)
    count: int = Field(default=0, nullable=False)


class TrainingQuotaCharge(SQLModel, table=True):
    """One training start counted against its tenant's daily quota.

    Kept apart from ``trainings`` so that erasing an avatar (and its trainings) does not
    hand the tenant its quota back: create-train-delete cycles would otherwise evade it.
    It holds no personal data, only the tenant and the time, and is purged after two days.
    """

    __tablename__ = "training_quota_charges"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(
        foreign_key="tenants.id", ondelete="CASCADE", nullable=False, index=True
    )
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
