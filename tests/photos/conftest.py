from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from avatar_api.photos.processing import PhotoRejected, normalise_photo
from tests.photos.fixtures import Outcome, PhotoFixture, build_photo_set


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, PhotoFixture]:
    return build_photo_set(tmp_path_factory.mktemp("photo-fixtures"))


@pytest.fixture(scope="session")
def normalised(
    photo_set: Mapping[str, PhotoFixture], tmp_path_factory: pytest.TempPathFactory
) -> Mapping[str, tuple[Path, Outcome]]:
    """Every fixture through the default pipeline once: (output path, result or rejection)."""
    out_dir = tmp_path_factory.mktemp("photo-outputs")
    outcomes: dict[str, tuple[Path, Outcome]] = {}
    for name, fixture in photo_set.items():
        dst = out_dir / f"{name}.jpg"
        try:
            outcomes[name] = (dst, normalise_photo(fixture.path, dst))
        except PhotoRejected as exc:
            outcomes[name] = (dst, exc)
    return outcomes
