from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class PhotoRead(BaseModel):
    id: uuid.UUID
    avatar_id: uuid.UUID
    filename: str = Field(description="The uploaded file's name, sanitised; display only.")
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    face_count: int | None = Field(description="Faces found (portrait avatars), else null.")
    face_box: list[int] | None = Field(description="Largest face as [x, y, width, height].")
    warnings: list[str] = Field(description="Checks that failed in `warn` mode.")
    created_at: datetime


class PhotoDetail(PhotoRead):
    download_url: str = Field(description="Short-lived URL of the normalised JPEG.")
    download_url_expires_at: datetime


class PhotoRejection(BaseModel):
    filename: str
    code: str = Field(
        description="Stable reason: unsupported_format, empty_file, corrupt_image, "
        "decompression_bomb, too_small, bad_aspect_ratio, duplicate, near_duplicate, "
        "no_face, multiple_faces, photo_limit_reached."
    )
    message: str = Field(description="What is wrong and what to do, in plain words.")


class PhotoCounts(BaseModel):
    photo_count: int
    min_photos: int
    max_photos: int
    ready_for_training: bool = Field(description="Enough photos to start a training.")


class PhotoUploadResult(PhotoCounts):
    accepted: list[PhotoRead]
    rejected: list[PhotoRejection]


class PhotoList(PhotoCounts):
    items: list[PhotoRead]
