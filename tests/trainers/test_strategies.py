from __future__ import annotations

from typing import Any

import httpx
import pytest

from avatar_api.models import TrainingType
from avatar_api.settings import StyleTrainer
from avatar_api.trainers import Preset, TrainerStrategy, TrainingRequest, get_strategy
from avatar_api.trainers.base import InvalidTrainerOutput, InvalidTrainingOverrides
from tests.conftest import make_settings


def built(
    strategy: TrainerStrategy, preset: Preset | None = Preset.balanced, **overrides: Any
) -> dict[str, Any]:
    return strategy.build_input(
        TrainingRequest(
            archive_url="https://files.example/a.zip",
            trigger_phrase="PERSON_1a2b3c4d",
            parameters=strategy.resolve_parameters(preset, overrides),
            comment="Anna (avatar 123)",
        )
    )


def test_portrait_presets_come_from_the_legacy_settings() -> None:
    settings = make_settings(
        fal_fast_portrait_steps=11,
        fal_fast_portrait_lr=0.0004,
        fal_portrait_steps=999,
        fal_portrait_create_masks=True,
    )
    strategy = get_strategy(TrainingType.portrait, settings)
    assert strategy.endpoint == "fal-ai/flux-lora-portrait-trainer"
    assert strategy.inference_endpoint == "fal-ai/flux-lora"
    fast = built(strategy, Preset.fast)
    assert fast == {
        "images_data_url": "https://files.example/a.zip",
        "trigger_phrase": "PERSON_1a2b3c4d",
        "steps": 11,
        "learning_rate": 0.0004,
        "multiresolution_training": True,
        "subject_crop": True,
        "create_masks": True,
    }
    assert built(strategy, None)["steps"] == 999
    assert built(strategy, Preset.quality)["learning_rate"] == 0.0001


def test_overrides_win_and_are_range_checked() -> None:
    strategy = get_strategy(TrainingType.portrait, make_settings())
    result = built(strategy, steps=42, subject_crop=False)
    assert (result["steps"], result["subject_crop"]) == (42, False)
    for bad in ({"steps": 0}, {"steps": 10001}, {"learning_rate": 0.5}, {"bogus": 1}):
        with pytest.raises(InvalidTrainingOverrides) as info:
            built(strategy, **bad)
        assert info.value.status_code == 422
        assert info.value.errors[0]["loc"][:2] == ["body", "overrides"]


def test_style_uses_pro_trainer_by_default() -> None:
    strategy = get_strategy(TrainingType.style, make_settings())
    assert strategy.endpoint == "fal-ai/flux-pro-trainer"
    assert strategy.inference_endpoint == "fal-ai/flux-pro/v1.1-ultra-finetuned"
    result = built(strategy, Preset.fast, lora_rank=32)
    assert result["data_url"] == "https://files.example/a.zip"
    assert result["trigger_word"] == "PERSON_1a2b3c4d"
    assert result["finetune_comment"] == "Anna (avatar 123)"
    assert result["mode"] == "style"
    assert (result["iterations"], result["priority"], result["lora_rank"]) == (150, "speed", 32)
    assert strategy.parse_result({"finetune_id": "ft-1"}).finetune_id == "ft-1"
    with pytest.raises(InvalidTrainerOutput):
        strategy.parse_result({})
    with pytest.raises(InvalidTrainingOverrides):
        built(strategy, lora_rank=8)


def test_style_alternative_is_a_setting() -> None:
    settings = make_settings(style_trainer=StyleTrainer.flux_lora_fast_training)
    strategy = get_strategy(TrainingType.style, settings)
    assert strategy.endpoint == "fal-ai/flux-lora-fast-training"
    result = built(strategy, Preset.quality)
    assert result["is_style"] is True
    assert result["images_data_url"] == "https://files.example/a.zip"
    assert result["steps"] == 2000


def test_lora_result_parsing() -> None:
    strategy = get_strategy(TrainingType.portrait, make_settings())
    output = {
        "diffusers_lora_file": {
            "url": "https://cdn/lora.safetensors",
            "content_type": "application/octet-stream",
            "file_name": "lora.safetensors",
            "file_size": 1234,
        },
        "config_file": {"url": "https://cdn/config.json"},
    }
    result = strategy.parse_result(output)
    assert (result.lora_url, result.lora_size) == ("https://cdn/lora.safetensors", 1234)
    assert result.config_url == "https://cdn/config.json"
    with pytest.raises(InvalidTrainerOutput):
        strategy.parse_result({"diffusers_lora_file": {"file_size": 3}})


async def test_training_types_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/training-types")
    assert response.status_code == 200
    items = {item["training_type"]: item for item in response.json()["items"]}
    portrait = items["portrait"]
    assert portrait["trainer_endpoint"] == "fal-ai/flux-lora-portrait-trainer"
    assert (portrait["min_photos"], portrait["max_photos"]) == (10, 20)
    presets = {p["name"]: p["parameters"] for p in portrait["presets"]}
    assert presets["fast"]["steps"] == 300
    assert presets["balanced"]["steps"] == 600
    assert presets["quality"]["learning_rate"] == 0.0001
    assert presets["default"]["steps"] == 1000
    assert "steps" in portrait["overrides_schema"]["properties"]
    assert items["style"]["trainer_endpoint"] == "fal-ai/flux-pro-trainer"
    assert items["style"]["result_kind"] == "finetune"
