from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from avatar_api.settings import Settings, UnsafeConfiguration


def env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.choices[0] if isinstance(alias, AliasChoices) else f"AVATAR_{name.upper()}")
    return {str(n) for n in names}


def test_env_example_documents_every_setting(repo_root: Path) -> None:
    lines = (repo_root / ".env.example").read_text().splitlines()
    documented = {}
    for i, line in enumerate(lines):
        match = re.match(r"^([A-Z0-9_]+)=", line)
        if match:
            documented[match.group(1)] = i
    assert set(documented) == env_names()
    for name, i in documented.items():
        # Each variable, or the group it belongs to, has a comment right above it.
        above = lines[i - 1]
        assert above.startswith("#") or re.match(r"^[A-Z0-9_]+=", above), name


def test_env_example_loads(repo_root: Path) -> None:
    settings = Settings(_env_file=repo_root / ".env.example")
    assert settings.fal_portrait_steps == 1000
    assert settings.effective_test_mode


def test_legacy_trainer_variables_keep_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "FAL_KEY": "id:secret",
        "AVATAR_TEST_MODE": "false",
        "FAL_PORTRAIT_STEPS": "1234",
        "FAL_PORTRAIT_LEARNING_RATE": "0.0005",
        "FAL_PORTRAIT_SUBJECT_CROP": "false",
        "FAL_PORTRAIT_CREATE_MASKS": "true",
        "FAL_PORTRAIT_MULTIRESOLUTION": "false",
        "FAL_FAST_PORTRAIT_STEPS": "11",
        "FAL_FAST_PORTRAIT_LR": "0.00031",
        "FAL_BALANCED_PORTRAIT_STEPS": "22",
        "FAL_BALANCED_PORTRAIT_LR": "0.00021",
        "FAL_QUALITY_PORTRAIT_STEPS": "33",
        "FAL_QUALITY_PORTRAIT_LR": "0.00011",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    s = Settings(_env_file=None)
    assert s.fal_key is not None
    assert s.fal_key.get_secret_value() == "id:secret"
    assert s.test_mode is False
    assert not s.effective_test_mode
    assert (s.fal_portrait_steps, s.fal_portrait_learning_rate) == (1234, 0.0005)
    assert (s.fal_portrait_subject_crop, s.fal_portrait_create_masks) == (False, True)
    assert s.fal_portrait_multiresolution is False
    assert (s.fal_fast_portrait_steps, s.fal_fast_portrait_lr) == (11, 0.00031)
    assert (s.fal_balanced_portrait_steps, s.fal_balanced_portrait_lr) == (22, 0.00021)
    assert (s.fal_quality_portrait_steps, s.fal_quality_portrait_lr) == (33, 0.00011)


def test_defaults_match_the_legacy_system() -> None:
    s = Settings(_env_file=None)
    assert (s.fal_portrait_steps, s.fal_portrait_learning_rate) == (1000, 0.0002)
    assert (s.fal_fast_portrait_steps, s.fal_fast_portrait_lr) == (300, 0.0003)
    assert (s.fal_balanced_portrait_steps, s.fal_balanced_portrait_lr) == (600, 0.0002)
    assert (s.fal_quality_portrait_steps, s.fal_quality_portrait_lr) == (1000, 0.0001)
    assert s.fal_portrait_subject_crop
    assert s.fal_portrait_multiresolution
    assert not s.fal_portrait_create_masks
    assert s.database_url.startswith("sqlite+aiosqlite:///./var/")


def test_test_mode_resolution() -> None:
    def make(**kw: Any) -> Settings:
        return Settings(_env_file=None, **kw)

    assert make().effective_test_mode  # development without a key
    assert not make(fal_key="a:b").effective_test_mode
    assert make(fal_key="a:b", test_mode=True).effective_test_mode
    # Production never falls back to the simulator on its own.
    assert not make(environment="production").effective_test_mode


def test_production_refuses_unsafe_configuration() -> None:
    unsafe = Settings(_env_file=None, environment="production")
    with pytest.raises(UnsafeConfiguration) as info:
        unsafe.check_production_safety()
    message = str(info.value)
    assert "AVATAR_SECRET_KEY" in message
    assert "FAL_KEY" in message
    assert "AVATAR_PUBLIC_BASE_URL" in message

    test_mode = Settings(
        _env_file=None,
        environment="production",
        secret_key="x" * 40,
        public_base_url="https://avatars.example.com",
        test_mode=True,
    )
    with pytest.raises(UnsafeConfiguration, match="AVATAR_TEST_MODE"):
        test_mode.check_production_safety()
    allowed = test_mode.model_copy(update={"allow_test_mode_in_production": True})
    allowed.check_production_safety()

    safe = Settings(
        _env_file=None,
        environment="production",
        secret_key="x" * 40,
        public_base_url="https://avatars.example.com",
        fal_key="id:secret",
    )
    safe.check_production_safety()


def test_inconsistent_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="PORTRAIT_MIN_PHOTOS"):
        Settings(_env_file=None, portrait_min_photos=30, portrait_max_photos=20)
