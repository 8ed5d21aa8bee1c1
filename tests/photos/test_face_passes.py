"""Face detection in two passes: a cheap first pass decides only clear one-face photos.

Each photo here is built so that a single detector run at the first pass's size gets the
count wrong, while the full-size pass gets it right: these tests fail if the retry at the
full size (or the low-score band that triggers it) is removed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

from avatar_api.photos import faces
from avatar_api.photos.processing import _encode_jpeg, _preview, normalise_photo, phash
from tests.photos.fixtures import PhotoFixture, _skimage_photo, astronaut

FRAME = (2048, 1536)


def _photo(path: Path, *people: tuple[int, tuple[int, int], bool]) -> Path:
    """A 2048x1536 JPEG of the rocket scene with the astronaut pasted in at (size, position,
    mirrored) for each person; 2048 px wide, so the pipeline keeps its size."""
    canvas = _skimage_photo("rocket").resize(FRAME, Image.Resampling.BICUBIC).convert("RGB")
    for size, position, mirrored in people:
        person = astronaut().resize((size, size), Image.Resampling.LANCZOS)
        if mirrored:
            person = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas.paste(person, position)
    canvas.save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def small_face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The face is ~45 px wide: ~14 px at the full detection size, ~11 px at the first pass's.
    return _photo(tmp_path_factory.mktemp("passes") / "small_face.jpg", (300, (60, 60), False))


@pytest.fixture(scope="module")
def small_second_face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photo(
        tmp_path_factory.mktemp("passes") / "small_second_face.jpg",
        (1100, (300, 300), False),
        (280, (1600, 1000), True),
    )


def _first_pass_alone(output: Path) -> list[faces.FaceBox]:
    """What one detector run on the first pass's input, at the production threshold, finds."""
    with Image.open(output) as image:
        small = _preview(image.convert("RGB"))
    assert max(small.size) == faces.FIRST_PASS_MAX_SIDE
    # An image no bigger than the first pass gets exactly one run, at SCORE_THRESHOLD.
    return faces.detect_faces(small)


def _last_detection_side() -> int:
    # Same thread as the call just made, so this is the detector that ran last.
    return max(faces._detector().getInputSize())


def test_a_small_face_missed_by_the_first_pass_is_found_at_the_full_size(
    small_face: Path, tmp_path: Path
) -> None:
    photo = normalise_photo(small_face, tmp_path / "out.jpg")
    assert _last_detection_side() == faces.DETECTION_MAX_SIDE
    assert photo.face_count == 1
    assert photo.face_box is not None
    x, y, w, h = photo.face_box
    assert w < 0.05 * FRAME[0]
    # Inside the pasted 300 px square at (60, 60).
    assert 60 <= x < x + w <= 360
    assert 60 <= y < y + h <= 360

    assert _first_pass_alone(tmp_path / "out.jpg") == []


def test_a_small_second_face_is_counted_although_the_first_pass_sees_one(
    small_second_face: Path, tmp_path: Path
) -> None:
    photo = normalise_photo(small_second_face, tmp_path / "out.jpg")
    assert _last_detection_side() == faces.DETECTION_MAX_SIDE
    assert photo.face_count == 2

    # At the first pass's size the second face scores in the ambiguous band: one face
    # above the threshold, so a first pass that trusted it would report one person.
    alone = _first_pass_alone(tmp_path / "out.jpg")
    assert len(alone) == 1
    with Image.open(tmp_path / "out.jpg") as image:
        candidates = faces._detect(_preview(image.convert("RGB")), FRAME, faces.AMBIGUOUS_SCORE)
    assert len(candidates) == 2
    assert faces.AMBIGUOUS_SCORE <= candidates[1].score < faces.SCORE_THRESHOLD


def test_a_clear_single_face_is_decided_by_the_first_pass(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path
) -> None:
    photo = normalise_photo(photo_set["twelve_megapixel"].path, tmp_path / "out.jpg")
    assert (photo.width, photo.height) == FRAME
    assert photo.face_count == 1
    assert faces._detector().getInputSize() == (512, 384)


def test_the_preview_is_only_used_when_big_enough() -> None:
    image = astronaut().resize(FRAME, Image.Resampling.LANCZOS)
    full = faces.detect_faces(image)
    assert faces.detect_faces(image, preview=_preview(image)) == full
    # Too small to shrink from: ignored, the image itself is shrunk instead.
    assert faces.detect_faces(image, preview=image.reduce(8)) == full
    assert _last_detection_side() == faces.FIRST_PASS_MAX_SIDE


# Outputs of 1024 px or more: smaller ones are their own preview.
@pytest.mark.parametrize("name", ["twelve_megapixel", "tiny_face", "astronaut_large", "two_people"])
def test_hashing_the_preview_gives_the_full_size_hash(
    photo_set: Mapping[str, PhotoFixture], name: str
) -> None:
    with Image.open(photo_set[name].path) as source:
        image = source.convert("RGB")
    image.thumbnail((2048, 2048), Image.Resampling.LANCZOS)
    preview = _preview(image)
    assert preview.size != image.size
    assert phash(preview) == phash(image)


def test_encoding_drops_info_metadata_without_touching_the_image() -> None:
    image = astronaut()
    image.info["comment"] = b"leak-check: planted comment"
    data = _encode_jpeg(image, 92)
    assert b"leak-check" not in data
    assert image.info["comment"] == b"leak-check: planted comment"
    with Image.open(io.BytesIO(data)) as written:
        assert written.size == image.size
