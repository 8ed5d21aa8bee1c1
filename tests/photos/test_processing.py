from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile

from avatar_api.photos import faces
from avatar_api.photos.processing import (
    NEAR_DUPLICATE_DISTANCE,
    NormalisedPhoto,
    PhotoRejected,
    ProcessingLimits,
    RejectionCode,
    is_near_duplicate,
    normalise_photo,
    phash,
    phash_distance,
    sniff_format,
)
from tests.photos.fixtures import (
    ACCEPTED,
    EXPECTED,
    REFUSED,
    SECRET_COMMENT,
    SECRET_MAKE,
    SECRET_XMP_MARKER,
    TRAILING_PAYLOAD,
    WITH_FACE_COUNT,
    Outcome,
    PhotoFixture,
    astronaut,
    upright_portrait,
)

Normalised = Mapping[str, tuple[Path, Outcome]]
FloatArray = npt.NDArray[np.float64]


def accepted(normalised: Normalised, name: str) -> tuple[Path, NormalisedPhoto]:
    dst, outcome = normalised[name]
    assert isinstance(outcome, NormalisedPhoto), f"{name} was refused: {outcome}"
    return dst, outcome


def refused(normalised: Normalised, name: str) -> PhotoRejected:
    _, outcome = normalised[name]
    assert isinstance(outcome, PhotoRejected), f"{name} was accepted: {outcome}"
    return outcome


def pixels(image: Image.Image | Path, mode: str = "RGB") -> FloatArray:
    opened = Image.open(image) if isinstance(image, Path) else image
    return np.asarray(opened.convert(mode), dtype=np.float64)


def mean_abs_diff(a: FloatArray, b: FloatArray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).mean())


# --- format sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", None),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", None),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"GIF89a\x01\x00\x01\x00", None),
    ],
)
def test_sniff_format_tells_heic_from_avif_and_other_containers(
    head: bytes, expected: str | None
) -> None:
    assert sniff_format(head) == expected


@pytest.mark.parametrize("name", ["png_named_jpg", "astronaut_webp", "heic_rotated_gps"])
def test_format_comes_from_the_bytes_not_the_file_name(
    photo_set: Mapping[str, PhotoFixture], normalised: Normalised, name: str
) -> None:
    fixture = photo_set[name]
    _, photo = accepted(normalised, name)
    assert photo.source_format == fixture.expected.source_format
    assert sniff_format(fixture.path.read_bytes()[:64]) == fixture.expected.source_format


# --- accepted and refused files ------------------------------------------------------------


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_photo_is_written_as_described(normalised: Normalised, name: str) -> None:
    dst, photo = accepted(normalised, name)
    expected = EXPECTED[name]
    data = dst.read_bytes()
    with Image.open(dst) as written:
        assert written.format == "JPEG"
        assert written.mode == "RGB"
        assert written.size == (photo.width, photo.height)
    assert (photo.width, photo.height) == expected.output_size
    assert photo.source_format == expected.source_format
    assert photo.size_bytes == len(data)
    assert photo.sha256 == hashlib.sha256(data).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{16}", photo.phash)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_photo_gets_its_reason_and_no_output(normalised: Normalised, name: str) -> None:
    dst, _ = normalised[name]
    rejection = refused(normalised, name)
    assert rejection.code == EXPECTED[name].rejection
    assert rejection.message.endswith(".")
    assert not dst.exists()
    assert not list(dst.parent.glob(".*.tmp"))


def test_rejection_messages_say_what_to_do(normalised: Normalised) -> None:
    assert refused(normalised, "too_small").message == (
        "The image is 400x300 pixels; photos must be at least 512x512."
    )
    assert refused(normalised, "gif").message == (
        "This file is a GIF image; upload a JPEG, PNG, WebP or HEIC photo instead."
    )
    assert "7000x7000 pixels, 49 megapixels" in refused(normalised, "png_claims_7000").message
    assert "at most 40 megapixels" in refused(normalised, "png_claims_20000").message
    assert "short side would be only 307 pixels" in refused(normalised, "panorama").message


def test_photo_rejected_survives_a_process_pool() -> None:
    original = PhotoRejected(RejectionCode.TOO_SMALL, "The image is 1x1 pixels.")
    copy = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own object, round trip
    assert (copy.code, copy.message) == (RejectionCode.TOO_SMALL, "The image is 1x1 pixels.")


@pytest.mark.parametrize(
    "overrides",
    [{"min_side": 600, "max_side": 500}, {"jpeg_quality": 100}, {"max_pixels": 1000}],
)
def test_inconsistent_limits_are_refused(overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        ProcessingLimits(**overrides)


# --- decoding safety -----------------------------------------------------------------------


def test_pixel_cap_is_per_call_not_pillows_global(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path
) -> None:
    dst = tmp_path / "out.jpg"
    with pytest.raises(PhotoRejected) as caught:
        normalise_photo(photo_set["twelve_megapixel"].path, dst, ProcessingLimits(max_pixels=10**7))
    assert caught.value.code == RejectionCode.DECOMPRESSION_BOMB
    assert "4000x3000" in caught.value.message
    assert not dst.exists()


def test_header_size_under_pillows_limit_is_still_refused(normalised: Normalised) -> None:
    # 49 MP passes Pillow's default limit, so only our own header check can catch it.
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS > 7000 * 7000
    assert refused(normalised, "png_claims_7000").code == RejectionCode.DECOMPRESSION_BOMB


def test_pillow_bomb_warning_is_treated_as_an_error(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1024x1024 is over this global limit but under twice it: Pillow only warns.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700_000)
    with pytest.raises(PhotoRejected) as caught:
        normalise_photo(photo_set["astronaut_large"].path, tmp_path / "out.jpg")
    assert caught.value.code == RejectionCode.DECOMPRESSION_BOMB


def test_pipeline_refuses_to_run_with_truncated_loading_on(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        normalise_photo(photo_set["truncated_jpeg"].path, tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()


# --- metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exif6_gps_jpeg", "heic_rotated_gps"])
def test_metadata_fixtures_really_carry_gps(
    photo_set: Mapping[str, PhotoFixture], name: str
) -> None:
    # Guards the leak test below against passing on fixtures that had nothing to leak.
    with Image.open(photo_set[name].path) as source:
        exif = source.getexif()
        assert exif.get_ifd(0x8825)
        assert exif[0x010F] == SECRET_MAKE


@pytest.mark.parametrize("name", ACCEPTED)
def test_output_keeps_no_metadata(normalised: Normalised, name: str) -> None:
    dst, _ = accepted(normalised, name)
    data = dst.read_bytes()
    with Image.open(dst) as written:
        assert len(written.getexif()) == 0
        leaked = {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment"} & set(written.info)
        assert not leaked
    for marker in (
        b"Exif\x00\x00",
        b"http://ns.adobe.com/xap/1.0/",
        SECRET_COMMENT.encode(),
        SECRET_MAKE.encode(),
        SECRET_XMP_MARKER.encode(),
        TRAILING_PAYLOAD,
    ):
        assert marker not in data


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exif6_gps_jpeg", "heic_rotated_gps"])
def test_orientation_is_applied(normalised: Normalised, name: str) -> None:
    dst, photo = accepted(normalised, name)
    assert (photo.width, photo.height) == (600, 800)
    assert (photo.source_width, photo.source_height) == (600, 800)
    assert mean_abs_diff(pixels(dst), pixels(upright_portrait())) < 6
    assert photo.face_count == 1


def test_small_photo_is_never_upscaled(normalised: Normalised) -> None:
    _, photo = accepted(normalised, "astronaut_jpeg")
    assert (photo.source_width, photo.source_height) == (512, 512)
    assert (photo.width, photo.height) == (512, 512)


def test_photo_within_max_side_keeps_its_size(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path
) -> None:
    photo = normalise_photo(
        photo_set["twelve_megapixel"].path,
        tmp_path / "out.jpg",
        ProcessingLimits(max_side=4000),
        detect_faces=False,
    )
    assert (photo.width, photo.height) == (4000, 3000)


def test_long_side_is_capped(normalised: Normalised) -> None:
    _, photo = accepted(normalised, "twelve_megapixel")
    assert (photo.source_width, photo.source_height) == (4000, 3000)
    assert (photo.width, photo.height) == (2048, 1536)


def test_shrink_on_load_keeps_exact_size_and_quality(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path
) -> None:
    # max_side 1024 lets libjpeg decode the 4000x3000 file at half size before resizing.
    src = photo_set["twelve_megapixel"].path
    photo = normalise_photo(
        src, tmp_path / "out.jpg", ProcessingLimits(max_side=1024), detect_faces=False
    )
    assert (photo.width, photo.height) == (1024, 768)
    with Image.open(src) as full:
        reference = full.resize((1024, 768), Image.Resampling.LANCZOS)
    assert mean_abs_diff(pixels(tmp_path / "out.jpg"), pixels(reference)) < 3


# --- colour --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "tolerance"),
    [
        # Baselines: JPEG q92 of the untouched photo is ~2.6 (RGB) and ~1.3 (L) away; a
        # mishandled mode or profile (swapped channels, clipped 16-bit) is 20 to 110 away.
        ("astronaut_png", "RGB", 4),
        ("astronaut_webp", "RGB", 4),
        ("astronaut_icc_swapped", "RGB", 4),
        ("astronaut_cmyk", "RGB", 4),
        ("astronaut_palette", "RGB", 5),
        ("astronaut_grey", "L", 2.5),
        ("astronaut_grey_alpha", "L", 2.5),
        ("astronaut_16bit", "L", 2.5),
    ],
)
def test_colour_survives_mode_and_profile_conversion(
    normalised: Normalised, name: str, mode: str, tolerance: float
) -> None:
    dst, _ = accepted(normalised, name)
    assert mean_abs_diff(pixels(dst, mode), pixels(astronaut(), mode)) < tolerance


def test_icc_fixture_is_wrong_unless_its_profile_is_applied(
    photo_set: Mapping[str, PhotoFixture],
) -> None:
    with Image.open(photo_set["astronaut_icc_swapped"].path) as stored:
        assert stored.info.get("icc_profile")
        assert mean_abs_diff(pixels(stored), pixels(astronaut())) > 20


def test_transparency_is_composited_on_white(normalised: Normalised) -> None:
    dst, _ = accepted(normalised, "astronaut_rgba")
    out = pixels(dst)
    original = pixels(astronaut())
    assert np.all(out[8:56, 8:56] > 245)
    half = original[8:56, -56:-8] * (128 / 255) + 255 * (127 / 255)
    assert mean_abs_diff(out[8:56, -56:-8], half) < 6
    assert mean_abs_diff(out[100:, :], original[100:, :]) < 3


# --- faces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_FACE_COUNT)
def test_face_count(normalised: Normalised, name: str) -> None:
    _, photo = accepted(normalised, name)
    assert photo.face_count == EXPECTED[name].faces
    if photo.face_count:
        assert photo.face_box is not None
        assert photo.face_score is not None
        assert photo.face_score >= faces.SCORE_THRESHOLD
        x, y, w, h = photo.face_box
        assert 0 <= x < x + w <= photo.width
        assert 0 <= y < y + h <= photo.height
    else:
        assert photo.face_box is None
        assert photo.face_score is None


def test_largest_face_is_reported(normalised: Normalised) -> None:
    dst, photo = accepted(normalised, "two_people")
    with Image.open(dst) as written:
        found = faces.detect_faces(written)
    assert [box.area for box in found] == sorted((box.area for box in found), reverse=True)
    assert photo.face_box == found[0].as_tuple()
    x, _, w, _ = found[0].as_tuple()
    assert x + w <= 512  # the astronaut, on the left, has the bigger face


def test_tiny_face_is_found_with_a_tiny_box(normalised: Normalised) -> None:
    _, photo = accepted(normalised, "tiny_face")
    assert photo.face_box is not None
    _, _, w, h = photo.face_box
    assert w * h < 0.01 * photo.width * photo.height


def test_face_detection_can_be_skipped(
    photo_set: Mapping[str, PhotoFixture], tmp_path: Path
) -> None:
    photo = normalise_photo(
        photo_set["astronaut_jpeg"].path, tmp_path / "o.jpg", detect_faces=False
    )
    assert (photo.face_count, photo.face_box, photo.face_score) == (None, None, None)


def test_face_boxes_are_in_the_callers_pixels() -> None:
    small = faces.detect_faces(astronaut())
    large = faces.detect_faces(astronaut().resize((2048, 2048), Image.Resampling.LANCZOS))
    assert len(small) == len(large) == 1
    for a, b in zip(small[0].as_tuple(), large[0].as_tuple(), strict=True):
        assert abs(a * 4 - b) <= 0.03 * 2048


def test_detectors_in_parallel_threads_agree_with_a_single_thread(
    photo_set: Mapping[str, PhotoFixture],
) -> None:
    names = ["astronaut_jpeg", "two_people", "tiny_face", "cameraman", "coffee", "astronaut_rot8"]
    images = []
    for name in names:
        with Image.open(photo_set[name].path) as image:
            images.append(image.convert("RGB"))
    sequential = [faces.detect_faces(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(faces.detect_faces, images * 3))
    assert parallel == sequential * 3


def test_detector_never_sees_the_full_size_photo(normalised: Normalised) -> None:
    dst, _ = accepted(normalised, "twelve_megapixel")
    with Image.open(dst) as written:
        assert faces.detect_faces(written)
    # Same thread, so this is the detector that just ran.
    assert max(faces._detector().getInputSize()) <= faces.DETECTION_MAX_SIDE


def test_installed_model_matches_the_pinned_checksum() -> None:
    faces.load_model()


def test_model_with_another_checksum_is_refused() -> None:
    with pytest.raises(faces.FaceModelError, match="sha256"):
        faces.verified_model(b"not the YuNet model")


# --- near duplicates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "astronaut_jittered",
        "astronaut_recompressed",
        "astronaut_large",
        "astronaut_png",
        "astronaut_cmyk",
    ],
)
def test_copies_are_near_duplicates(normalised: Normalised, name: str) -> None:
    _, original = accepted(normalised, "astronaut_jpeg")
    _, copy = accepted(normalised, name)
    assert phash_distance(original.phash, copy.phash) <= NEAR_DUPLICATE_DISTANCE
    assert is_near_duplicate(original.phash, copy.phash)


@pytest.mark.parametrize(
    "name",
    [
        "cameraman",
        "astronaut_face_crop",
        "astronaut_flipped",
        "astronaut_rot8",
        "two_people",
        "cat",
    ],
)
def test_other_photos_are_not_near_duplicates(normalised: Normalised, name: str) -> None:
    _, original = accepted(normalised, "astronaut_jpeg")
    _, other = accepted(normalised, name)
    assert phash_distance(original.phash, other.phash) > NEAR_DUPLICATE_DISTANCE
    assert not is_near_duplicate(original.phash, other.phash)


def test_phash_distance_is_a_hamming_distance() -> None:
    a = phash(astronaut())
    b = phash(astronaut().transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    assert phash_distance(a, a) == 0
    assert phash_distance(a, b) == phash_distance(b, a) > 0
    assert phash_distance("0" * 16, "f" * 16) == 64
    assert phash_distance("0" * 16, "0" * 15 + "3") == 2
    with pytest.raises(ValueError, match="phash"):
        phash_distance("abc", "0" * 16)
