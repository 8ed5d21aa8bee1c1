from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from avatar_api.db import UTCDateTime
from avatar_api.models.base import created_at_field, id_field, tenant_fk


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: uuid.UUID = id_field()
    name: str = Field(max_length=100, unique=True)
    created_at: datetime = created_at_field()


class ApiKey(SQLModel, table=True):
    """An API key; only its SHA-256 is stored (keys are 256-bit random, so no KDF is needed)."""

    __tablename__ = "api_keys"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    name: str = Field(max_length=100, default="")
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = created_at_field()
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
