from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from avatar_api.models import TrainingStatus
from avatar_api.trainers import Preset


class TrainingStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = Field(
        default=None,
        description="fast, balanced or quality; omitted: the configured default parameters.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Trainer parameters to override, checked against the trainer's ranges "
        "(see `overrides_schema` in GET /v1/training-types).",
    )


class TrainingProgress(BaseModel):
    steps_done: int | None
    steps_total: int | None
    percent: float | None


class TrainingResult(BaseModel):
    kind: str = Field(description="`lora` or `finetune`.")
    lora_url: str | None = Field(description="fal's URL of the LoRA file (expires at fal).")
    lora_size: int | None
    config_url: str | None
    finetune_id: str | None


class TrainingRead(BaseModel):
    id: uuid.UUID
    avatar_id: uuid.UUID
    attempt: int
    status: TrainingStatus
    preset: str | None
    parameters: dict[str, Any] = Field(description="Resolved trainer parameters.")
    fal_input: dict[str, Any] | None = Field(
        description="The input sent to fal; the archive URL is redacted."
    )
    endpoint: str
    test_mode: bool = Field(description="True when the built-in simulator ran this training.")
    photo_count: int
    request_id: str | None = Field(description="fal's request id, once submitted.")
    queue_position: int | None
    progress: TrainingProgress
    logs: list[str] = Field(description="The last log lines from the trainer.")
    error_code: str | None
    error_message: str | None
    result: TrainingResult | None
    queued_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class TrainingPage(BaseModel):
    items: list[TrainingRead]
    next_cursor: str | None


class LoraDownload(BaseModel):
    training_id: uuid.UUID
    download_url: str = Field(description="Short-lived URL of our copy of the LoRA file.")
    expires_at: datetime
    size_bytes: int | None
    trigger_phrase: str = Field(description="Put it in prompts to call up the subject.")
