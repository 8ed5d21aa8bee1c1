from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from avatar_api.models import TrainingType
from avatar_api.settings import Settings
from avatar_api.trainers.base import Preset
from avatar_api.trainers.schemas import PresetRead, TrainingTypeList, TrainingTypeRead
from avatar_api.trainers.strategies import get_strategy


def photo_bounds(training_type: TrainingType, settings: Settings) -> tuple[int, int]:
    if training_type is TrainingType.portrait:
        return settings.portrait_min_photos, settings.portrait_max_photos
    return settings.style_min_photos, settings.style_max_photos


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    # A pure function of the class, and the costliest part of the answer (~0.6 ms each).
    return model.model_json_schema()


def describe_training_types(settings: Settings) -> TrainingTypeList:
    items = []
    for training_type in TrainingType:
        strategy = get_strategy(training_type, settings)
        low, high = photo_bounds(training_type, settings)
        presets = [PresetRead(name="default", parameters=strategy.preset_parameters(None))]
        presets += [
            PresetRead(name=p.value, parameters=strategy.preset_parameters(p)) for p in Preset
        ]
        items.append(
            TrainingTypeRead(
                training_type=training_type,
                trainer_endpoint=strategy.endpoint,
                inference_endpoint=strategy.inference_endpoint,
                result_kind=strategy.result_kind,
                best_for=strategy.best_for,
                notes=strategy.notes,
                min_photos=low,
                max_photos=high,
                presets=presets,
                overrides_schema=_json_schema(strategy.overrides_model),
            )
        )
    return TrainingTypeList(items=items)
