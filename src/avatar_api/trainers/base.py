"""The trainer-strategy port: one strategy per training type."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ValidationError

from avatar_api.errors import UnprocessableEntity


class Preset(StrEnum):
    fast = "fast"
    balanced = "balanced"
    quality = "quality"


class InvalidTrainingOverrides(UnprocessableEntity):
    code = "invalid_training_overrides"
    title = "Training overrides out of range"

    def __init__(self, errors: ValidationError):
        self.errors = [
            {"loc": ["body", "overrides", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in errors.errors(include_url=False)
        ]
        super().__init__(
            "; ".join(f"{'.'.join(map(str, e['loc'][2:]))}: {e['msg']}" for e in self.errors)
        )

    def extra(self) -> dict[str, Any]:
        return {"errors": self.errors}


class InvalidTrainerOutput(ValueError):
    """fal's result does not have the shape the trainer documents."""


@dataclass(frozen=True)
class TrainerResult:
    """What a finished training gives us, whatever the trainer."""

    lora_url: str | None = None
    lora_size: int | None = None
    lora_content_type: str | None = None
    config_url: str | None = None
    finetune_id: str | None = None


@dataclass(frozen=True)
class TrainingRequest:
    archive_url: str
    trigger_phrase: str
    # Resolved when the training was started (preset + overrides), so a settings change
    # between start and submission cannot alter what the caller was shown.
    parameters: Mapping[str, Any]
    comment: str


class TrainerStrategy(Protocol):
    """Knows one fal trainer: its endpoint, its input, its output, its inference endpoint."""

    endpoint: ClassVar[str]
    inference_endpoint: ClassVar[str]
    result_kind: ClassVar[str]
    best_for: ClassVar[str]
    notes: ClassVar[str]
    overrides_model: ClassVar[type[BaseModel]]

    def preset_parameters(self, preset: Preset | None) -> dict[str, Any]:
        """The tunable parameters a preset (or ``None``: the configured default) resolves to."""
        ...

    def resolve_parameters(
        self, preset: Preset | None, overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Preset parameters with the caller's overrides, range-checked (422 otherwise)."""
        ...

    def build_input(self, request: TrainingRequest) -> dict[str, Any]:
        """The exact JSON input sent to fal (without the webhook, which is a query param)."""
        ...

    def parse_result(self, output: Mapping[str, Any]) -> TrainerResult: ...

    def build_generation_input(self, request: GenerationRequest) -> dict[str, Any]:
        """The exact JSON input for ``inference_endpoint`` (422 for options it cannot take)."""
        ...


def validate_overrides(model: type[BaseModel], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides checked against the trainer's documented ranges (422 otherwise)."""
    try:
        return model.model_validate(dict(overrides)).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise InvalidTrainingOverrides(exc) from exc


def parse_lora_output(output: Mapping[str, Any]) -> TrainerResult:
    """The LoRA trainers' output: ``{diffusers_lora_file: File, config_file: File}``."""
    lora = output.get("diffusers_lora_file")
    if not isinstance(lora, Mapping) or not isinstance(lora.get("url"), str):
        raise InvalidTrainerOutput("fal output has no diffusers_lora_file.url")
    config = output.get("config_file")
    size = lora.get("file_size")
    content_type = lora.get("content_type")
    return TrainerResult(
        lora_url=lora["url"],
        lora_size=size if isinstance(size, int) else None,
        lora_content_type=content_type if isinstance(content_type, str) else None,
        config_url=config.get("url") if isinstance(config, Mapping) else None,
    )


# --- generation with a trained avatar -------------------------------------------------------

# fal's image_size presets for FLUX [dev] endpoints (flux-lora), with their pixel sizes.
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
# The aspect ratios FLUX 1.1 [pro] ultra accepts.
ASPECT_RATIOS: tuple[str, ...] = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
_RATIO_OF_SIZE = {
    "square_hd": "1:1",
    "square": "1:1",
    "portrait_4_3": "3:4",
    "portrait_16_9": "9:16",
    "landscape_4_3": "4:3",
    "landscape_16_9": "16:9",
}
_SIZE_OF_RATIO = {
    "1:1": "square_hd",
    "3:4": "portrait_4_3",
    "9:16": "portrait_16_9",
    "4:3": "landscape_4_3",
    "16:9": "landscape_16_9",
}
_CLASS_WORDS = {"male": "man", "female": "woman"}


class InvalidGenerationInput(UnprocessableEntity):
    code = "invalid_generation_input"
    title = "Generation options not supported by this avatar"

    def __init__(self, field: str, message: str):
        self.errors = [{"loc": ["body", field], "msg": message, "type": "value_error"}]
        super().__init__(f"{field}: {message}")

    def extra(self) -> dict[str, Any]:
        return {"errors": self.errors}


@dataclass(frozen=True)
class GenerationRequest:
    """What the caller asked for, with the avatar and the result of its training."""

    prompt: str
    trigger_phrase: str
    gender: str
    num_images: int = 1
    image_size: str | None = None
    aspect_ratio: str | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    strength: float = 1.0
    output_format: str = "jpeg"
    # The LoRA file fal downloads (our storage's URL when we hold a copy), or the finetune.
    lora_path: str | None = None
    finetune_id: str | None = None


def mentions_trigger(prompt: str, trigger: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(trigger)}(?![A-Za-z0-9_])", prompt) is not None


def portrait_prompt(prompt: str, trigger: str, gender: str) -> str:
    """The prompt with the subject named; LoRA portraits need the trigger to show the person."""
    if mentions_trigger(prompt, trigger):
        return prompt
    return f"a photo of {trigger} {_CLASS_WORDS.get(gender, 'person')}, {prompt}"


def style_prompt(prompt: str, trigger: str) -> str:
    if mentions_trigger(prompt, trigger):
        return prompt
    return f"{prompt}, in the style of {trigger}"


def ratio_size(aspect_ratio: str, megapixels: float = 1.0) -> tuple[int, int]:
    """About ``megapixels`` at ``aspect_ratio``, both sides multiples of 16."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return round(w * scale / 16) * 16, round(h * scale / 16) * 16


def lora_image_size(request: GenerationRequest) -> str | dict[str, int]:
    """flux-lora's ``image_size``: a preset, or an explicit size for ratios without one."""
    if request.image_size is not None:
        if request.image_size not in IMAGE_SIZES:
            raise InvalidGenerationInput("image_size", f"unknown size {request.image_size!r}")
        return request.image_size
    if request.aspect_ratio is None:
        return "square_hd"
    preset = _SIZE_OF_RATIO.get(request.aspect_ratio)
    if preset is not None:
        return preset
    if request.aspect_ratio not in ASPECT_RATIOS:
        raise InvalidGenerationInput(
            "aspect_ratio", f"{request.aspect_ratio!r} cannot be generated by this avatar"
        )
    width, height = ratio_size(request.aspect_ratio)
    return {"width": width, "height": height}


def ultra_aspect_ratio(request: GenerationRequest) -> str:
    """FLUX ultra's ``aspect_ratio``, converted from an ``image_size`` preset if needed."""
    if request.aspect_ratio is not None:
        if request.aspect_ratio not in ASPECT_RATIOS:
            raise InvalidGenerationInput(
                "aspect_ratio", f"{request.aspect_ratio!r} cannot be generated by this avatar"
            )
        return request.aspect_ratio
    if request.image_size is None:
        return "1:1"
    ratio = _RATIO_OF_SIZE.get(request.image_size)
    if ratio is None:
        raise InvalidGenerationInput(
            "image_size", f"{request.image_size!r} has no aspect ratio this avatar can generate"
        )
    return ratio
