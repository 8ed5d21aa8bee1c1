"""The trainer-strategy port: one strategy per training type."""

from __future__ import annotations

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
