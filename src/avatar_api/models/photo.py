from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from avatar_api.models.base import created_at_field, id_field, tenant_fk


class Photo(SQLModel, table=True):
    """An accepted, normalised photo (rejected uploads are never stored)."""

    __tablename__ = "photos"
    __table_args__ = (
        # Exact duplicates within one avatar are refused; the constraint backs up the check
        # against two concurrent uploads of the same file.
        UniqueConstraint("avatar_id", "sha256", name="uq_photos_avatar_sha256"),
        Index("ix_photos_avatar_created", "avatar_id", "created_at", "id"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = tenant_fk()
    avatar_id: uuid.UUID = Field(foreign_key="avatars.id", nullable=False, ondelete="CASCADE")
    filename: str = Field(max_length=255, description="Sanitised display name only.")
    storage_key: str = Field(max_length=512)
    content_type: str = Field(max_length=64, default="image/jpeg")
    source_format: str = Field(max_length=16)
    width: int
    height: int
    size_bytes: int
    sha256: str = Field(max_length=64)
    phash: str = Field(max_length=16)
    face_count: int | None = None
    face_box: list[int] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    face_score: float | None = None
    warnings: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = created_at_field()
