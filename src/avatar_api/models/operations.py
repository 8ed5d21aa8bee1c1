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
