from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from avatar_api.models import GenerationStatus

MAX_SEED = 2**32 - 1


class ImageSize(StrEnum):
    square_hd = "square_hd"
    square = "square"
    portrait_4_3 = "portrait_4_3"
    portrait_16_9 = "portrait_16_9"
    landscape_4_3 = "landscape_4_3"
    landscape_16_9 = "landscape_16_9"


AspectRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class GenerationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(
        description="What to generate. The avatar's trigger phrase is added when it is missing "
        "(portraits: `a photo of TRIGGER man|woman|person, ...`; styles: `..., in the style "
        "of TRIGGER`).",
        examples=["as an astronaut on the moon, cinematic light"],
    )
    num_images: int = Field(default=1, ge=1, le=4)
    image_size: ImageSize | None = Field(
        default=None,
        description="fal's size preset. Give this or `aspect_ratio`, not both; either is "
        "converted for the avatar's model. Default: square.",
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None, description="Width:height; the alternative to `image_size`."
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Same seed and options: same image."
    )
    guidance_scale: float | None = Field(
        default=None, ge=0, le=35, description="LoRA avatars only (default 3.5)."
    )
    num_inference_steps: int | None = Field(
        default=None, ge=1, le=50, description="LoRA avatars only (default 28)."
    )
    strength: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="How strongly the avatar shows: the LoRA scale, or the finetune strength.",
    )
    output_format: Literal["jpeg", "png"] = "jpeg"

    @model_validator(mode="after")
    def _one_size(self) -> GenerationCreate:
        if self.image_size is not None and self.aspect_ratio is not None:
            raise ValueError("give image_size or aspect_ratio, not both")
        return self


class GeneratedImage(BaseModel):
    url: str = Field(description="Short-lived download URL of our copy of the image.")
    url_expires_at: datetime
    width: int | None
    height: int | None
    content_type: str
    nsfw: bool | None = Field(description="fal's safety checker flagged the image.")


class GenerationRead(BaseModel):
    id: uuid.UUID
    avatar_id: uuid.UUID
    training_id: uuid.UUID
    status: GenerationStatus
    prompt: str = Field(description="The prompt as given.")
    final_prompt: str = Field(description="The prompt sent to the model, trigger phrase included.")
    parameters: dict[str, Any] = Field(description="The options as requested.")
    endpoint: str = Field(description="The fal model that generates the images.")
    test_mode: bool = Field(description="True when the built-in simulator made the images.")
    request_id: str | None = Field(description="fal's request id, once submitted.")
    images: list[GeneratedImage]
    seed: int | None = Field(description="The seed fal used; reuse it to repeat an image.")
    error_code: str | None
    error_message: str | None
    queued_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class GenerationPage(BaseModel):
    items: list[GenerationRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
