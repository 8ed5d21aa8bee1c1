"""The concrete strategies and the registry keyed by training type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from avatar_api.models import TrainingType
from avatar_api.settings import Settings, StyleTrainer
from avatar_api.trainers.base import (
    GenerationRequest,
    InvalidGenerationInput,
    InvalidTrainerOutput,
    Preset,
    TrainerResult,
    TrainerStrategy,
    TrainingRequest,
    lora_image_size,
    parse_lora_output,
    portrait_prompt,
    style_prompt,
    ultra_aspect_ratio,
    validate_overrides,
)

FLUX_LORA = "fal-ai/flux-lora"
FLUX_PRO_FINETUNED = "fal-ai/flux-pro/v1.1-ultra-finetuned"
DEFAULT_INFERENCE_STEPS = 28
DEFAULT_GUIDANCE_SCALE = 3.5
# fal's default for FLUX ultra: 1 (strict) .. 6 (permissive).
SAFETY_TOLERANCE = "2"


def flux_lora_input(request: GenerationRequest, prompt: str) -> dict[str, Any]:
    """``fal-ai/flux-lora`` with the avatar's LoRA file."""
    if not request.lora_path:
        raise InvalidTrainerOutput("the training has no LoRA file")
    fal_input: dict[str, Any] = {
        "prompt": prompt,
        "loras": [{"path": request.lora_path, "scale": request.strength}],
        "image_size": lora_image_size(request),
        "num_inference_steps": request.num_inference_steps or DEFAULT_INFERENCE_STEPS,
        "guidance_scale": (
            DEFAULT_GUIDANCE_SCALE if request.guidance_scale is None else request.guidance_scale
        ),
        "num_images": request.num_images,
        "enable_safety_checker": True,
        "output_format": request.output_format,
    }
    if request.seed is not None:
        fal_input["seed"] = request.seed
    return fal_input


class PortraitOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, le=10000)
    learning_rate: float | None = Field(default=None, ge=1e-6, le=1e-3)
    multiresolution_training: bool | None = None
    subject_crop: bool | None = None
    create_masks: bool | None = None


class PortraitStrategy:
    endpoint: ClassVar[str] = "fal-ai/flux-lora-portrait-trainer"
    inference_endpoint: ClassVar[str] = FLUX_LORA
    result_kind: ClassVar[str] = "lora"
    best_for: ClassVar[str] = "A person's face and likeness from 10-20 photos of one person."
    notes: ClassVar[str] = (
        "FLUX LoRA tuned for portraits (subject crop, multi-resolution). Cost and time grow "
        "with steps: roughly 5-30 minutes."
    )
    overrides_model: ClassVar[type[BaseModel]] = PortraitOverrides

    def resolve_parameters(
        self, preset: Preset | None, overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **self.preset_parameters(preset),
            **validate_overrides(PortraitOverrides, overrides),
        }

    def __init__(self, settings: Settings):
        self._s = settings

    def preset_parameters(self, preset: Preset | None) -> dict[str, Any]:
        s = self._s
        steps, lr = {
            None: (s.fal_portrait_steps, s.fal_portrait_learning_rate),
            Preset.fast: (s.fal_fast_portrait_steps, s.fal_fast_portrait_lr),
            Preset.balanced: (s.fal_balanced_portrait_steps, s.fal_balanced_portrait_lr),
            Preset.quality: (s.fal_quality_portrait_steps, s.fal_quality_portrait_lr),
        }[preset]
        return {
            "steps": steps,
            "learning_rate": lr,
            "multiresolution_training": s.fal_portrait_multiresolution,
            "subject_crop": s.fal_portrait_subject_crop,
            "create_masks": s.fal_portrait_create_masks,
        }

    def build_input(self, request: TrainingRequest) -> dict[str, Any]:
        params = dict(request.parameters)
        return {
            "images_data_url": request.archive_url,
            "trigger_phrase": request.trigger_phrase,
            **params,
        }

    def parse_result(self, output: Mapping[str, Any]) -> TrainerResult:
        return parse_lora_output(output)

    def build_generation_input(self, request: GenerationRequest) -> dict[str, Any]:
        prompt = portrait_prompt(request.prompt, request.trigger_phrase, request.gender)
        return flux_lora_input(request, prompt)


class ProStyleOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["character", "product", "style", "general"] | None = None
    iterations: int | None = Field(default=None, ge=100, le=1000)
    learning_rate: float | None = Field(default=None, ge=1e-6, le=1e-3)
    priority: Literal["speed", "quality", "high_res_only"] | None = None
    captioning: bool | None = None
    lora_rank: Literal[16, 32] | None = None
    finetune_type: Literal["full", "lora"] | None = None


class ProStyleStrategy:
    endpoint: ClassVar[str] = "fal-ai/flux-pro-trainer"
    inference_endpoint: ClassVar[str] = FLUX_PRO_FINETUNED
    result_kind: ClassVar[str] = "finetune"
    best_for: ClassVar[str] = "A visual style (illustration, palette, look) from 10-30 images."
    notes: ClassVar[str] = (
        "FLUX Pro finetune; generation uses FLUX 1.1 Pro Ultra. fal marks this trainer "
        "deprecated: set AVATAR_STYLE_TRAINER=flux-lora-fast-training for the LoRA alternative."
    )
    overrides_model: ClassVar[type[BaseModel]] = ProStyleOverrides

    def resolve_parameters(
        self, preset: Preset | None, overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **self.preset_parameters(preset),
            **validate_overrides(ProStyleOverrides, overrides),
        }

    _PRESETS: ClassVar[dict[Preset | None, dict[str, Any]]] = {
        Preset.fast: {"iterations": 150, "priority": "speed", "lora_rank": 16},
        Preset.balanced: {"iterations": 300, "priority": "quality", "lora_rank": 32},
        Preset.quality: {"iterations": 500, "priority": "quality", "lora_rank": 32},
    }

    def preset_parameters(self, preset: Preset | None) -> dict[str, Any]:
        base = {
            "mode": "style",
            "learning_rate": 0.0001,
            "captioning": True,
            "finetune_type": "lora",
        }
        return {**base, **self._PRESETS[preset or Preset.balanced]}

    def build_input(self, request: TrainingRequest) -> dict[str, Any]:
        params = dict(request.parameters)
        return {
            "data_url": request.archive_url,
            "trigger_word": request.trigger_phrase,
            "finetune_comment": request.comment[:200],
            **params,
        }

    def parse_result(self, output: Mapping[str, Any]) -> TrainerResult:
        finetune_id = output.get("finetune_id")
        if not isinstance(finetune_id, str) or not finetune_id:
            raise InvalidTrainerOutput("fal output has no finetune_id")
        return TrainerResult(finetune_id=finetune_id)

    def build_generation_input(self, request: GenerationRequest) -> dict[str, Any]:
        # FLUX ultra has no sampler knobs: refusing them beats silently ignoring them.
        for name in ("guidance_scale", "num_inference_steps"):
            if getattr(request, name) is not None:
                raise InvalidGenerationInput(
                    name, "not supported for avatars trained as a FLUX Pro finetune"
                )
        if not request.finetune_id:
            raise InvalidTrainerOutput("the training has no finetune id")
        fal_input: dict[str, Any] = {
            "prompt": style_prompt(request.prompt, request.trigger_phrase),
            "finetune_id": request.finetune_id,
            "finetune_strength": request.strength,
            "aspect_ratio": ultra_aspect_ratio(request),
            "num_images": request.num_images,
            "output_format": request.output_format,
            "safety_tolerance": SAFETY_TOLERANCE,
        }
        if request.seed is not None:
            fal_input["seed"] = request.seed
        return fal_input


class FastStyleOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, le=10000)
    create_masks: bool | None = None


class FastStyleStrategy:
    endpoint: ClassVar[str] = "fal-ai/flux-lora-fast-training"
    inference_endpoint: ClassVar[str] = FLUX_LORA
    result_kind: ClassVar[str] = "lora"
    best_for: ClassVar[str] = "A visual style from 10-30 images, as a FLUX LoRA."
    notes: ClassVar[str] = "FLUX LoRA fast training with is_style=true; minutes, not hours."
    overrides_model: ClassVar[type[BaseModel]] = FastStyleOverrides

    def resolve_parameters(
        self, preset: Preset | None, overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **self.preset_parameters(preset),
            **validate_overrides(FastStyleOverrides, overrides),
        }

    _STEPS: ClassVar[dict[Preset | None, int]] = {
        Preset.fast: 500,
        Preset.balanced: 1000,
        Preset.quality: 2000,
    }

    def preset_parameters(self, preset: Preset | None) -> dict[str, Any]:
        return {"steps": self._STEPS[preset or Preset.balanced], "create_masks": False}

    def build_input(self, request: TrainingRequest) -> dict[str, Any]:
        params = dict(request.parameters)
        return {
            "images_data_url": request.archive_url,
            "trigger_word": request.trigger_phrase,
            "is_style": True,
            **params,
        }

    def parse_result(self, output: Mapping[str, Any]) -> TrainerResult:
        return parse_lora_output(output)

    def build_generation_input(self, request: GenerationRequest) -> dict[str, Any]:
        return flux_lora_input(request, style_prompt(request.prompt, request.trigger_phrase))


def get_strategy(training_type: TrainingType, settings: Settings) -> TrainerStrategy:
    if training_type is TrainingType.portrait:
        return PortraitStrategy(settings)
    if settings.style_trainer is StyleTrainer.flux_lora_fast_training:
        return FastStyleStrategy()
    return ProStyleStrategy()


def strategy_for_endpoint(endpoint: str, settings: Settings) -> TrainerStrategy:
    """The strategy that produced a stored training, even after the setting changed."""
    for strategy in (PortraitStrategy(settings), ProStyleStrategy(), FastStyleStrategy()):
        if strategy.endpoint == endpoint:
            return strategy
    raise KeyError(endpoint)


__all__ = [
    "FastStyleStrategy",
    "InvalidTrainerOutput",
    "PortraitStrategy",
    "ProStyleStrategy",
    "get_strategy",
    "strategy_for_endpoint",
]
