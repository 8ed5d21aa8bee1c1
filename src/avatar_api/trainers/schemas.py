from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from avatar_api.models import TrainingType


class PresetRead(BaseModel):
    name: str = Field(
        description="fast, balanced, quality, or `default` (used when no preset is sent)."
    )
    parameters: dict[str, Any]


class TrainingTypeRead(BaseModel):
    training_type: TrainingType
    trainer_endpoint: str
    inference_endpoint: str
    result_kind: str = Field(description="`lora` (a LoRA file) or `finetune` (a fal finetune id).")
    best_for: str
    notes: str
    min_photos: int
    max_photos: int
    presets: list[PresetRead]
    overrides_schema: dict[str, Any] = Field(
        description="JSON Schema of the `overrides` accepted when starting a training."
    )


class TrainingTypeList(BaseModel):
    items: list[TrainingTypeRead]
