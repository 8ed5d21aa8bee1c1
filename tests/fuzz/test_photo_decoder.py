"""Hypothesis fuzzing of the photo decoder (`normalise_photo`) and of the upload route.

Inputs: random bytes; random bytes behind each accepted format's magic; and mutations of a
valid file in each accepted format (JPEG with EXIF orientation and an ICC profile, PNG with
alpha, WebP, HEIC): bit flips, truncation, inserted/deleted/overwritten bytes, and header
fields (dimensions, bit depth, colour type, chunk sizes ...) set to edge values.

Properties: the outcome is a `NormalisedPhoto` (and then `dst` is a decodable JPEG of the
reported size) or `PhotoRejected` (and then `dst` was not written); any other exception
is a bug; no case runs longer than `CASE_DEADLINE_SECONDS`. Through the API, an upload of
mutated files never answers 5xx.

~100 examples per property in `make test`; `AVATAR_FUZZ_EXAMPLES` raises it.
"""

from __future__ import annotations

import io
import queue
import random
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, TypeVar

import httpx
import pillow_heif
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms

from avatar_api.photos.processing import NormalisedPhoto, PhotoRejected, normalise_photo
from tests.fuzz import fuzz_examples
from tests.photos.fixtures import astronaut, upright_portrait

T = TypeVar("T")

EXAMPLES: Final = fuzz_examples(100)
# Far above the slowest legitimate case (a 40-megapixel decode takes ~1 s here), far below
# "stuck". A case past it fails the test; its thread is left behind as a daemon.
CASE_DEADLINE_SECONDS: Final = 20.0
HEADER_REGION: Final = 1024  # mutations concentrate where the structure is parsed

DECODER_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # wall time is bounded by run_with_deadline instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- seeds: one valid file per accepted format ------------------------------------------------


def _jpeg_with_exif_and_icc() -> bytes:
    stored = upright_portrait().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=85, exif=exif.tobytes(), icc_profile=icc)
    return buffer.getvalue()


def _png_with_alpha() -> bytes:
    rgba = astronaut().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _webp() -> bytes:
    buffer = io.BytesIO()
    astronaut().save(buffer, "WEBP", quality=80)
    return buffer.getvalue()


def _heic() -> bytes:
    heif = pillow_heif.from_pillow(upright_portrait())
    buffer = io.BytesIO()
    heif.save(buffer, format="HEIF", quality=60, enc_params={"preset": "ultrafast"})
    return buffer.getvalue()


SEED_BUILDERS: Final[dict[str, Callable[[], bytes]]] = {
    "JPEG": _jpeg_with_exif_and_icc,
    "PNG": _png_with_alpha,
    "WEBP": _webp,
    "HEIF": _heic,
}
MAGIC: Final = {
    "JPEG": b"\xff\xd8\xff\xe0",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "WEBP": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "HEIF": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
}


@cache
def seed(fmt: str) -> bytes:
    return SEED_BUILDERS[fmt]()


# --- header fields: where each format keeps sizes and layout ----------------------------------


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # bytes, big-endian unless little


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, start = [], 0
    while (index := data.find(needle, start)) != -1:
        found.append(index)
        start = index + 1
    return found


def header_fields(fmt: str, data: bytes) -> list[Field]:
    """Offsets of the fields a decoder trusts: dimensions, depths, counts, lengths."""
    fields: list[Field] = []
    if fmt == "PNG":
        # IHDR: width, height, bit depth, colour type, compression, filter, interlace.
        fields += [Field(16, 4), Field(20, 4), *(Field(o, 1) for o in range(24, 29))]
        fields += [Field(i - 4, 4) for i in _find_all(data, b"IDAT")[:3]]  # chunk lengths
    elif fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            for i in _find_all(data, marker)[:2]:
                # length, precision, height, width, component count
                fields += [Field(i + 2, 2), Field(i + 4, 1), Field(i + 5, 2), Field(i + 7, 2)]
                fields.append(Field(i + 9, 1))
        fields += [Field(i + 2, 2) for i in _find_all(data, b"\xff\xe1")[:1]]  # EXIF length
        fields += [Field(i + 2, 2) for i in _find_all(data, b"\xff\xe2")[:1]]  # ICC length
    elif fmt == "WEBP":
        fields += [Field(4, 4), Field(16, 4)]  # RIFF size, first chunk size (little-endian)
        fields += [Field(26, 2), Field(28, 2)]  # VP8 frame width / height (+ scale bits)
    elif fmt == "HEIF":
        for i in _find_all(data, b"ispe")[:2]:
            fields += [Field(i - 4, 4), Field(i + 8, 4), Field(i + 12, 4)]  # size, w, h
        for box in (b"ftyp", b"meta", b"iloc", b"iinf", b"hvcC", b"mdat"):
            fields += [Field(i - 4, 4) for i in _find_all(data, box)[:1]]  # box sizes
    return [f for f in fields if f.offset >= 0 and f.offset + f.size <= len(data)]


# --- mutations ---------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """A valid `fmt` file with one to three mutations applied."""
    data = bytearray(seed(fmt))
    fields = header_fields(fmt, bytes(data))
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        if not data:
            break
        size = len(data)
        near_header = draw(st.booleans(), label="near header")
        limit = min(size, HEADER_REGION) if near_header else size
        pos = draw(st.integers(0, limit - 1), label="position")
        kind = draw(
            st.sampled_from(["flip", "truncate", "field", "overwrite", "insert", "delete"]),
            label="kind",
        )
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7), label="bit")
        elif kind == "truncate":
            del data[draw(st.integers(0, size - 1), label="keep") :]
        elif kind == "field" and fields:
            field = draw(st.sampled_from(fields), label="field")
            top = 256**field.size - 1
            value = draw(
                st.sampled_from([0, 1, 2, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, top, top - 1])
                | st.integers(0, top),
                label="value",
            )
            data[field.offset : field.offset + field.size] = (value & top).to_bytes(
                field.size, "big"
            )
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16), label="bytes")
            data[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64), label="bytes")
        else:
            del data[pos : pos + draw(st.integers(1, 64), label="length")]
    return bytes(data)


# --- running one case --------------------------------------------------------------------------


def run_with_deadline(work: Callable[[], T], seconds: float = CASE_DEADLINE_SECONDS) -> T:
    """`work()` in a daemon thread; fail the test if it takes longer than `seconds`."""
    box: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            box.put((True, work()))
        except BaseException as exc:
            box.put((False, exc))

    threading.Thread(target=target, name="fuzz-case", daemon=True).start()
    try:
        ok, value = box.get(timeout=seconds)
    except queue.Empty:
        pytest.fail(f"normalise_photo was still running after {seconds:.0f} s (stuck)")
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


Outcome = NormalisedPhoto | PhotoRejected


def check_outcome(data: bytes) -> Outcome:
    """Normalise `data`; only a photo or a rejection may come out, never anything else."""
    with tempfile.TemporaryDirectory(prefix="fuzz-photo-") as tmp:
        src, dst = Path(tmp) / "upload", Path(tmp) / "out.jpg"
        src.write_bytes(data)

        def work() -> Outcome:
            try:
                return normalise_photo(src, dst)
            except PhotoRejected as exc:
                return exc

        outcome = run_with_deadline(work)
        leftovers = sorted(p.name for p in Path(tmp).iterdir() if p.name not in {"upload"})
        if isinstance(outcome, PhotoRejected):
            assert outcome.message, "a rejection must tell the user what to do"
            assert leftovers == [], f"a rejected photo left files behind: {leftovers}"
            return outcome
        assert leftovers == ["out.jpg"], leftovers
        with Image.open(dst) as written:
            written.load()
            assert written.format == "JPEG"
            assert written.size == (outcome.width, outcome.height)
        assert outcome.size_bytes == dst.stat().st_size
        return outcome


# --- properties ----------------------------------------------------------------------------------


@DECODER_SETTINGS
@given(data=st.binary(max_size=8192))
def test_random_bytes(data: bytes) -> None:
    check_outcome(data)


@DECODER_SETTINGS
@given(fmt=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=8192))
def test_random_bytes_behind_a_valid_magic(fmt: str, tail: bytes) -> None:
    check_outcome(MAGIC[fmt] + tail)


@pytest.mark.parametrize("fmt", sorted(SEED_BUILDERS))
def test_seed_is_accepted(fmt: str) -> None:
    """The mutations start from a file the pipeline accepts, or they prove little."""
    outcome = check_outcome(seed(fmt))
    assert isinstance(outcome, NormalisedPhoto), outcome
    assert outcome.source_format == fmt
    assert header_fields(fmt, seed(fmt)), f"no header fields found in the {fmt} seed"


@pytest.mark.parametrize("fmt", sorted(SEED_BUILDERS))
def test_mutated_file(fmt: str) -> None:
    @DECODER_SETTINGS
    @given(data=mutated(fmt))
    def run(data: bytes) -> None:
        check_outcome(data)

    run()


# --- through the API -----------------------------------------------------------------------------


@pytest.fixture
async def raw_client(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """Like `client`, but a crash in the app arrives as the 500 a real server would send."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        yield client


def _mutate(rng: random.Random, fmt: str) -> bytes:
    data = bytearray(seed(fmt))
    fields = header_fields(fmt, bytes(data))
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.3 and fields:
            field = rng.choice(fields)
            value = rng.choice([0, 1, 256**field.size - 1, rng.randrange(256**field.size)])
            data[field.offset : field.offset + field.size] = value.to_bytes(field.size, "big")
        elif choice < 0.5:
            del data[rng.randrange(len(data)) :]
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), HEADER_REGION))] ^= 1 << rng.randrange(8)
        if not data:
            data = bytearray(MAGIC[fmt])
    return bytes(data)


def mutated_uploads(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` mutated files, formats in turn, deterministic in `rng`."""
    files = []
    formats = sorted(SEED_BUILDERS)
    for i in range(count):
        fmt = formats[i % len(formats)]
        data = _mutate(rng, fmt)
        files.append((f"mutated_{i}.{fmt.lower()}", data))
    return files


async def upload(client: httpx.AsyncClient, files: list[tuple[str, bytes]]) -> httpx.Response:
    created = await client.post("/v1/avatars", json={"name": "Fuzz", "training_type": "portrait"})
    assert created.status_code == 201, created.text
    return await client.post(
        f"/v1/avatars/{created.json()['id']}/photos",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    )


@pytest.mark.parametrize("round_", range(max(1, EXAMPLES // 50)))
async def test_upload_of_mutated_files_never_answers_5xx(
    raw_client: httpx.AsyncClient, round_: int
) -> None:
    rng_seed = random.SystemRandom().randrange(2**32)
    files = mutated_uploads(random.Random(rng_seed), 12)
    response = await upload(raw_client, files)
    context = f"mutated_uploads(random.Random({rng_seed}), 12) answered {response.status_code}"
    assert response.status_code == 201, f"{context}: {response.text}"
    body = response.json()
    assert len(body["accepted"]) + len(body["rejected"]) == len(files), context
    assert all(r["code"] and r["message"] for r in body["rejected"]), context


def test_mutations_change_the_file() -> None:
    """Guard against a mutation helper that silently returns the seed unchanged."""
    for name, data in mutated_uploads(random.Random(7), 8):
        assert data != seed(name.rsplit(".", 1)[1].upper()), name
    # The PNG header fields point at the real dimensions.
    png = seed("PNG")
    with Image.open(io.BytesIO(png)) as image:
        assert struct.unpack(">II", png[16:24]) == image.size


# --- regressions: defects the fuzzing found, fixed in src/ -------------------------------------


def heic_with_wrong_ispe() -> bytes:
    """The HEIC seed with its `ispe` (image spatial extents) box claiming a width of 1."""
    data = bytearray(seed("HEIF"))
    at = data.find(b"ispe") + 8  # box type, then 4 bytes of version and flags
    data[at : at + 4] = (1).to_bytes(4, "big")
    return bytes(data)


def test_heic_with_a_wrong_ispe_box_is_rejected(tmp_path: Path) -> None:
    """libheif refuses it with a RuntimeError ("Security limit exceeded"): once a 500."""
    src = tmp_path / "wrong_ispe.heic"
    src.write_bytes(heic_with_wrong_ispe())
    with pytest.raises(PhotoRejected) as rejected:
        normalise_photo(src, tmp_path / "out.jpg")
    assert rejected.value.code == "corrupt_image"
    assert not (tmp_path / "out.jpg").exists()


async def test_upload_of_a_heic_with_a_wrong_ispe_box(raw_client: httpx.AsyncClient) -> None:
    response = await upload(raw_client, [("wrong_ispe.heic", heic_with_wrong_ispe())])
    assert response.status_code == 201, f"{response.status_code}: {response.text}"
    assert [r["code"] for r in response.json()["rejected"]] == ["corrupt_image"]
