"""What a generation request becomes: fal's input per strategy, and the API's refusals."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.fal.gateway import FalPermanentError
from avatar_api.fal.simulator import (
    FLUX_LORA,
    FLUX_PRO_FINETUNED,
    check_generation_input,
    check_safetensors,
    safetensors_lora,
)
from avatar_api.generations.schemas import GenerationCreate
from avatar_api.models import Avatar, AvatarStatus, Training, TrainingStatus, TrainingType
from avatar_api.settings import StyleTrainer
from avatar_api.trainers import get_strategy
from avatar_api.trainers.base import GenerationRequest, InvalidGenerationInput
from tests.conftest import make_settings
from tests.fakes import RecordingGateway

TRIGGER = "PERSON_1a2b3c4d"
LORA = "https://files.example/lora.safetensors"


def portrait_input(**fields: Any) -> dict[str, Any]:
    strategy = get_strategy(TrainingType.portrait, make_settings())
    values: dict[str, Any] = {
        "prompt": "on a beach",
        "trigger_phrase": TRIGGER,
        "gender": "unspecified",
        "lora_path": LORA,
    }
    values.update(fields)
    return strategy.build_generation_input(GenerationRequest(**values))


def pro_input(**fields: Any) -> dict[str, Any]:
    strategy = get_strategy(TrainingType.style, make_settings())
    values: dict[str, Any] = {
        "prompt": "a fox",
        "trigger_phrase": "STYLE_9f8e7d6c",
        "gender": "unspecified",
        "finetune_id": "ft-123",
    }
    values.update(fields)
    return strategy.build_generation_input(GenerationRequest(**values))


def test_portrait_lora_input_with_defaults() -> None:
    assert portrait_input() == {
        "prompt": f"a photo of {TRIGGER} person, on a beach",
        "loras": [{"path": LORA, "scale": 1.0}],
        "image_size": "square_hd",
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "num_images": 1,
        "enable_safety_checker": True,
        "output_format": "jpeg",
    }


def test_portrait_lora_input_with_every_option() -> None:
    built = portrait_input(
        num_images=4,
        image_size="landscape_16_9",
        seed=0,
        guidance_scale=0.0,
        num_inference_steps=12,
        strength=1.7,
        output_format="png",
    )
    assert built["loras"] == [{"path": LORA, "scale": 1.7}]
    assert (built["num_images"], built["image_size"], built["seed"]) == (4, "landscape_16_9", 0)
    assert (built["guidance_scale"], built["num_inference_steps"]) == (0.0, 12)
    assert built["output_format"] == "png"


@pytest.mark.parametrize(
    ("gender", "prompt", "expected"),
    [
        ("male", "in a suit", f"a photo of {TRIGGER} man, in a suit"),
        ("female", "in a suit", f"a photo of {TRIGGER} woman, in a suit"),
        ("unspecified", "in a suit", f"a photo of {TRIGGER} person, in a suit"),
        # Already named: left exactly as written.
        ("male", f"portrait of {TRIGGER}, oil painting", f"portrait of {TRIGGER}, oil painting"),
        ("female", f"{TRIGGER} smiling", f"{TRIGGER} smiling"),
        # Only as part of a longer word: not a mention.
        ("male", f"{TRIGGER}_x", f"a photo of {TRIGGER} man, {TRIGGER}_x"),
    ],
)
def test_portrait_prompt_gets_the_trigger_and_class_word(
    gender: str, prompt: str, expected: str
) -> None:
    assert portrait_input(gender=gender, prompt=prompt)["prompt"] == expected


@pytest.mark.parametrize(
    ("aspect_ratio", "image_size"),
    [
        ("1:1", "square_hd"),
        ("3:4", "portrait_4_3"),
        ("9:16", "portrait_16_9"),
        ("4:3", "landscape_4_3"),
        ("16:9", "landscape_16_9"),
        # No preset has these ratios: flux-lora takes an explicit size (multiples of 16).
        ("3:2", {"width": 1248, "height": 832}),
        ("2:3", {"width": 832, "height": 1248}),
        ("21:9", {"width": 1568, "height": 672}),
        ("9:21", {"width": 672, "height": 1568}),
    ],
)
def test_aspect_ratio_becomes_a_lora_image_size(
    aspect_ratio: str, image_size: str | dict[str, int]
) -> None:
    assert portrait_input(aspect_ratio=aspect_ratio)["image_size"] == image_size


def test_pro_finetune_input() -> None:
    assert pro_input(strength=1.4, seed=7, num_images=2, output_format="png") == {
        "prompt": "a fox, in the style of STYLE_9f8e7d6c",
        "finetune_id": "ft-123",
        "finetune_strength": 1.4,
        "aspect_ratio": "1:1",
        "num_images": 2,
        "output_format": "png",
        "safety_tolerance": "2",
        "seed": 7,
    }
    assert pro_input(prompt="STYLE_9f8e7d6c poster")["prompt"] == "STYLE_9f8e7d6c poster"


@pytest.mark.parametrize(
    ("image_size", "aspect_ratio"),
    [
        ("square_hd", "1:1"),
        ("square", "1:1"),
        ("portrait_4_3", "3:4"),
        ("portrait_16_9", "9:16"),
        ("landscape_4_3", "4:3"),
        ("landscape_16_9", "16:9"),
    ],
)
def test_image_size_becomes_a_finetune_aspect_ratio(image_size: str, aspect_ratio: str) -> None:
    assert pro_input(image_size=image_size)["aspect_ratio"] == aspect_ratio
    assert pro_input(aspect_ratio="21:9")["aspect_ratio"] == "21:9"


@pytest.mark.parametrize(
    "fields",
    [
        {"guidance_scale": 3.5},
        {"num_inference_steps": 28},
        {"image_size": "square_xl"},
        {"aspect_ratio": "5:4"},
    ],
)
def test_pro_finetune_refuses_what_it_cannot_take(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidGenerationInput) as caught:
        pro_input(**fields)
    assert caught.value.status_code == 422
    assert caught.value.errors[0]["loc"] == ["body", next(iter(fields))]


def test_lora_refuses_unknown_sizes() -> None:
    for fields in ({"image_size": "huge"}, {"aspect_ratio": "5:4"}):
        with pytest.raises(InvalidGenerationInput):
            portrait_input(**fields)


def test_fast_style_lora_puts_the_style_last() -> None:
    strategy = get_strategy(
        TrainingType.style, make_settings(style_trainer=StyleTrainer.flux_lora_fast_training)
    )
    built = strategy.build_generation_input(
        GenerationRequest(
            prompt="a fox",
            trigger_phrase="STYLE_1",
            gender="male",
            lora_path=LORA,
            aspect_ratio="9:16",
        )
    )
    assert built["prompt"] == "a fox, in the style of STYLE_1"
    assert built["loras"] == [{"path": LORA, "scale": 1.0}]
    assert built["image_size"] == "portrait_16_9"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "x" * 2001},
        {"prompt": "x", "num_images": 0},
        {"prompt": "x", "num_images": 5},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "seed": 2**32},
        {"prompt": "x", "strength": 2.01},
        {"prompt": "x", "strength": -0.1},
        {"prompt": "x", "image_size": "huge"},
        {"prompt": "x", "aspect_ratio": "5:4"},
        {"prompt": "x", "image_size": "square", "aspect_ratio": "1:1"},
        {"prompt": "x", "output_format": "webp"},
        {"prompt": "x", "num_inference_steps": 0},
        {"prompt": "x", "loras": []},
    ],
)
def test_schema_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerationCreate.model_validate(body)


def test_schema_defaults_and_limits() -> None:
    data = GenerationCreate.model_validate({"prompt": "  x  ", "seed": 2**32 - 1})
    assert data.prompt == "x"
    assert (data.num_images, data.strength, data.output_format) == (1, 1.0, "jpeg")
    assert data.seed == 2**32 - 1
    assert GenerationCreate.model_validate({"prompt": "x" * 2000}).prompt == "x" * 2000


# --- through the API (rolled-back transaction, recording gateway) ----------------------------


async def completed_avatar(
    client: httpx.AsyncClient,
    session: AsyncSession,
    *,
    training_type: str = "portrait",
    gender: str = "male",
    trained: bool = True,
) -> dict[str, Any]:
    response = await client.post(
        "/v1/avatars", json={"name": "A", "training_type": training_type, "gender": gender}
    )
    assert response.status_code == 201
    created: dict[str, Any] = response.json()
    if trained:
        avatar = await session.get(Avatar, uuid.UUID(created["id"]))
        assert avatar is not None
        avatar.status = AvatarStatus.completed
        pro = training_type == "style"
        session.add(avatar)
        session.add(
            Training(
                tenant_id=avatar.tenant_id,
                avatar_id=avatar.id,
                attempt=1,
                status=TrainingStatus.completed,
                endpoint="fal-ai/flux-pro-trainer" if pro else "fal-ai/flux-lora-portrait-trainer",
                test_mode=False,
                finetune_id="ft-1" if pro else None,
                lora_url=None if pro else LORA,
            )
        )
        await session.commit()
    return created


async def test_api_creates_a_queued_generation_and_its_submit_job(
    client: httpx.AsyncClient,
    other_client: httpx.AsyncClient,
    session: AsyncSession,
    gateway: RecordingGateway,
) -> None:
    avatar = await completed_avatar(client, session)
    url = f"/v1/avatars/{avatar['id']}/generations"
    response = await client.post(url, json={"prompt": "skiing", "image_size": "portrait_4_3"})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued"
    assert created["final_prompt"] == f"a photo of {avatar['trigger_phrase']} man, skiing"
    assert created["parameters"]["image_size"] == "portrait_4_3"
    assert gateway.calls == []  # submission is the job's business

    fetched = await client.get(f"/v1/generations/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["id"] == created["id"]
    assert (await other_client.get(f"/v1/generations/{created['id']}")).status_code == 404
    assert (await other_client.get(url)).status_code == 404
    missing = await client.get(f"/v1/generations/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "generation_not_found"


async def test_api_lists_newest_first_with_a_cursor(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    avatar = await completed_avatar(client, session)
    url = f"/v1/avatars/{avatar['id']}/generations"
    ids = []
    for n in range(3):
        response = await client.post(url, json={"prompt": f"picture {n}"})
        assert response.status_code == 202
        ids.append(response.json()["id"])
    first = (await client.get(url, params={"limit": 2})).json()
    assert [g["id"] for g in first["items"]] == ids[::-1][:2]
    rest = (await client.get(url, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [g["id"] for g in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None


async def test_api_refusals(client: httpx.AsyncClient, session: AsyncSession) -> None:
    draft = await completed_avatar(client, session, trained=False)
    response = await client.post(f"/v1/avatars/{draft['id']}/generations", json={"prompt": "x"})
    assert response.status_code == 409
    assert response.json()["code"] == "avatar_not_trained"

    style = await completed_avatar(client, session, training_type="style")
    url = f"/v1/avatars/{style['id']}/generations"
    response = await client.post(url, json={"prompt": "x", "num_inference_steps": 10})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_generation_input"
    response = await client.post(
        url, json={"prompt": "x", "image_size": "square", "aspect_ratio": "1:1"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    response = await client.post(url, json={"prompt": "x", "negative_prompt": "y"})
    assert response.status_code == 422
    assert (
        await client.post(f"/v1/avatars/{uuid.uuid4()}/generations", json={"prompt": "x"})
    ).status_code == 404


# --- the test-mode simulator refuses what fal refuses ------------------------------------------


def test_simulator_checks_generation_inputs() -> None:
    lora = {"prompt": "x", "loras": [{"path": LORA, "scale": 1.0}], "image_size": "square_hd"}
    check_generation_input(FLUX_LORA, lora)
    check_generation_input(FLUX_LORA, {**lora, "image_size": {"width": 1248, "height": 832}})
    finetune = {"prompt": "x", "finetune_id": f"sim-finetune-{uuid.uuid4()}"}
    check_generation_input(FLUX_PRO_FINETUNED, {**finetune, "finetune_strength": 1.0})
    refused: list[tuple[str, dict[str, Any], str]] = [
        (FLUX_LORA, {**lora, "prompt": " "}, "prompt"),
        (FLUX_LORA, {**lora, "loras": []}, "loras"),
        (FLUX_LORA, {**lora, "loras": [{"scale": 1}]}, "loras[0].path"),
        (FLUX_LORA, {**lora, "image_size": "huge"}, "image_size"),
        (FLUX_LORA, {**lora, "num_images": 5}, "num_images"),
        (FLUX_PRO_FINETUNED, finetune, "finetune_strength"),
        (
            FLUX_PRO_FINETUNED,
            {**finetune, "finetune_strength": 1, "finetune_id": "ft-1"},
            "finetune_id",
        ),
        (FLUX_PRO_FINETUNED, {**finetune, "finetune_strength": 3}, "finetune_strength"),
    ]
    for endpoint, arguments, field in refused:
        with pytest.raises(FalPermanentError) as caught:
            check_generation_input(endpoint, arguments)
        assert caught.value.status_code == 422
        assert caught.value.message.startswith(f"{field}:"), (field, caught.value.message)


def test_simulator_checks_the_lora_file(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    good = safetensors_lora(seed="x")
    path.write_bytes(good)
    assert check_safetensors(path) is None
    for bad in (b"", b"PK\x03\x04 not a lora", good[:-8], b"\x02\0\0\0\0\0\0\0{}"):
        path.write_bytes(bad)
        assert check_safetensors(path) is not None, bad[:16]
