from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from avatar_api.models import AvatarStatus, Gender, TrainingType

AvatarName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
TriggerPhrase = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{2,39}$"),
    Field(
        description="Word that stands for the subject in prompts: a letter, then 2-39 "
        "letters, digits or underscores. Generated (e.g. PERSON_1a2b3c4d) when absent.",
        examples=["PERSON_1a2b3c4d"],
    ),
]
ExternalUserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$"),
    Field(
        description="Your own id for the end user (e.g. a Telegram user id).",
        examples=["tg:123456789"],
    ),
]
Metadata = Annotated[
    dict[str, Any],
    Field(description="Your own small JSON object (size-capped), returned as given."),
]


class AvatarCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: AvatarName
    training_type: TrainingType
    gender: Gender = Gender.unspecified
    external_user_id: ExternalUserId | None = None
    trigger_phrase: TriggerPhrase | None = None
    metadata: Metadata = Field(default_factory=dict)


class AvatarUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: AvatarName | None = None
    metadata: Metadata | None = None


class AvatarRead(BaseModel):
    id: uuid.UUID
    name: str
    training_type: TrainingType
    gender: Gender
    external_user_id: str | None
    trigger_phrase: str
    metadata: dict[str, Any]
    status: AvatarStatus
    created_at: datetime
    updated_at: datetime


class AvatarPage(BaseModel):
    items: list[AvatarRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class DeletedRecords(BaseModel):
    avatars: int
    photos: int
    trainings: int
    generations: int = 0


class ProviderCleanup(BaseModel):
    request_id: str
    endpoint: str
    cancel_requested: bool = Field(description="The request was still running at fal.")
    payload_deletion: str = Field(
        description="`queued`: fal is asked (with retries) to delete its stored inputs/outputs."
    )


class AvatarDeletionReceipt(BaseModel):
    avatar_id: uuid.UUID
    external_user_id: str | None
    deleted_at: datetime
    database: DeletedRecords
    storage_objects_deleted: int = Field(
        description="Photos, archives, LoRA files and images removed from storage."
    )
    provider: list[ProviderCleanup]


class UserDeletionReceipt(BaseModel):
    external_user_id: str
    avatars: list[AvatarDeletionReceipt]
