"""Per-photo pipeline: sniff, decode safely, normalise to an sRGB JPEG, and check it.

Everything here is synchronous and CPU-bound: call it from a worker thread or process, never
from the event loop. The only thing kept from the upload is its pixels.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from avatar_api.photos import faces

SNIFF_BYTES: Final = 64
ACCEPTED_FORMATS_TEXT: Final = "JPEG, PNG, WebP or HEIC"
PHASH_HEX_LENGTH: Final = 16
# Measured on the test fixture set: copies that were re-encoded, resized, greyed, colour-jittered
# or CMYK/16-bit/ICC-converted are 0 bits apart, one with transparent corners flattened is 8;
# the same shot rotated by 8-12 degrees is 12-16 apart, other photos 18 or more.
NEAR_DUPLICATE_DISTANCE: Final = 10

_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_HEIC_BRANDS: Final = _HEIF_BRANDS - {b"mif1", b"msf1"}
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_GREY_MODES: Final = frozenset({"1", "L", "LA", "La"})
_HIGH_DEPTH_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ICC_COLOUR_SPACE: Final = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}
_DECODE_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class RejectionCode(StrEnum):
    EMPTY_FILE = "empty_file"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECOMPRESSION_BOMB = "decompression_bomb"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_SMALL = "too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"


class PhotoRejected(Exception):
    """The upload is not a photo we can use; `message` tells the user what to do instead."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[PhotoRejected], tuple[RejectionCode, str]]:
        # The pipeline may run in a process pool: the exception must survive pickling.
        return (type(self), (self.code, self.message))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class ProcessingLimits:
    max_pixels: int = 40_000_000
    max_side: int = 2048
    min_side: int = 512
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_side < self.min_side:
            raise ValueError("need 1 <= min_side <= max_side")
        if self.max_pixels < self.min_side * self.min_side:
            raise ValueError("max_pixels must allow at least a min_side x min_side image")
        if not 1 <= self.jpeg_quality <= 95:
            # Pillow documents quality above 95 as wasteful: bigger files, no visible gain.
            raise ValueError("jpeg_quality must be between 1 and 95")


DEFAULT_LIMITS: Final = ProcessingLimits()


@dataclass(frozen=True)
class NormalisedPhoto:
    """Facts about the JPEG written by `normalise_photo`; sizes are in output pixels."""

    source_format: str
    source_width: int
    source_height: int
    width: int
    height: int
    size_bytes: int
    sha256: str
    phash: str
    face_count: int | None
    face_box: tuple[int, int, int, int] | None
    face_score: float | None


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name of an accepted image, from its first bytes; None if refused."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        major, compatible = _ftyp_brands(head)
        if major in _AVIF_BRANDS:
            return None
        # mif1/msf1 are generic HEIF brands that AVIF files also use as their major brand.
        if major in _HEIF_BRANDS and (
            major in _HEIC_BRANDS or not (compatible & _AVIF_BRANDS) or compatible & _HEIC_BRANDS
        ):
            return "HEIF"
    return None


def _ftyp_brands(head: bytes) -> tuple[bytes, frozenset[bytes]]:
    box_size = int.from_bytes(head[0:4], "big")
    end = min(len(head), box_size) if box_size >= 16 else len(head)
    compatible = frozenset(head[i : i + 4] for i in range(16, end - 3, 4))
    return head[8:12], compatible


def _describe_refused(head: bytes) -> str:
    known = (
        (b"GIF87a", "a GIF image"),
        (b"GIF89a", "a GIF image"),
        (b"BM", "a BMP image"),
        (b"II*\x00", "a TIFF image"),
        (b"MM\x00*", "a TIFF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
    )
    for magic, name in known:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and _ftyp_brands(head)[0] in _AVIF_BRANDS | {b"mif1", b"msf1"}:
        return "an AVIF image"
    return "not an image format we recognise"


def phash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (the pHash/imagehash algorithm) as 16 hex characters."""
    # Shrink first (reduce() then LANCZOS), convert after: 32x32 grey pixels, not 3 MP of them.
    grey = image.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0).convert("L")
    pixels = np.asarray(grey, dtype=np.float64)
    basis = _dct_basis(32)
    low = (basis @ pixels @ basis.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{PHASH_HEX_LENGTH}x}"


@cache
def _dct_basis(size: int) -> npt.NDArray[np.float64]:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    basis: npt.NDArray[np.float64] = np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    return basis


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two `phash` values: 0 is identical, 64 is opposite."""
    for value in (a, b):
        if len(value) != PHASH_HEX_LENGTH:
            raise ValueError(f"not a {PHASH_HEX_LENGTH}-hex-digit phash: {value!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def is_near_duplicate(a: str, b: str, threshold: int = NEAR_DUPLICATE_DISTANCE) -> bool:
    return phash_distance(a, b) <= threshold


@cache
def _register_heif() -> None:
    pillow_heif.register_heif_opener()


@cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _harden_pillow() -> None:
    _register_heif()
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Refuse to run rather than silently accept half-decoded uploads as valid photos.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated files would pass")
    # Re-applied on every call because test runners and other libraries reset warning filters.
    # Our own max_pixels check below is the real guard; this catches Pillow's global limit too.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def normalise_photo(
    src: Path,
    dst: Path,
    limits: ProcessingLimits = DEFAULT_LIMITS,
    *,
    detect_faces: bool = True,
) -> NormalisedPhoto:
    """Decode the upload at `src` and write it to `dst` as a clean sRGB JPEG.

    Raises `PhotoRejected` for anything the user should fix; `dst` is written only on success.
    """
    _harden_pillow()
    with src.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
        if not head:
            raise PhotoRejected(RejectionCode.EMPTY_FILE, "The file is empty; upload a photo.")
        source_format = sniff_format(head)
        if source_format is None:
            raise PhotoRejected(
                RejectionCode.UNSUPPORTED_FORMAT,
                f"This file is {_describe_refused(head)}; "
                f"upload a {ACCEPTED_FORMATS_TEXT} photo instead.",
            )
        fh.seek(0)
        upright, source_size = _decode_upright(fh, source_format, limits)

    _check_dimensions(source_size, limits)
    output = _to_srgb(_downscale(upright, source_size, limits))
    jpeg = _encode_jpeg(output, limits.jpeg_quality)

    # One box-filtered copy feeds both the perceptual hash and the detector's first pass, so
    # the full-size output is read once for the two of them instead of twice (~3 ms a read).
    preview = _preview(output)
    face_count: int | None = None
    face_box: tuple[int, int, int, int] | None = None
    face_score: float | None = None
    if detect_faces:
        found = faces.detect_faces(output, preview=preview)
        face_count = len(found)
        if found:
            face_box = found[0].as_tuple()
            face_score = found[0].score

    # Written last, so a failure anywhere above leaves no output behind.
    _write_atomically(dst, jpeg)
    return NormalisedPhoto(
        source_format=source_format,
        source_width=source_size[0],
        source_height=source_size[1],
        width=output.width,
        height=output.height,
        size_bytes=len(jpeg),
        sha256=hashlib.sha256(jpeg).hexdigest(),
        phash=phash(preview),
        face_count=face_count,
        face_box=face_box,
        face_score=face_score,
    )


def _bomb(pixels: int, limits: ProcessingLimits, size: tuple[int, int] | None) -> PhotoRejected:
    if size:
        claim = f"claims to be {size[0]}x{size[1]} pixels, {pixels / 1e6:.0f} megapixels"
    elif pixels:
        claim = f"claims to be {pixels / 1e6:.0f} megapixels"
    else:
        claim = "is too large"
    return PhotoRejected(
        RejectionCode.DECOMPRESSION_BOMB,
        f"The image {claim}; photos may have at most {limits.max_pixels / 1e6:g} megapixels. "
        "Export it smaller and upload it again.",
    )


def _corrupt() -> PhotoRejected:
    return PhotoRejected(
        RejectionCode.CORRUPT_IMAGE,
        "The image file is damaged or incomplete and cannot be decoded; "
        "upload the original photo again.",
    )


def _decode_upright(
    fh: BinaryIO, source_format: str, limits: ProcessingLimits
) -> tuple[Image.Image, tuple[int, int]]:
    """Fully decoded, orientation-applied image and the upright size of the source."""
    try:
        # Only the sniffed format's decoder may claim the file, so a PNG cannot be handed to
        # another plugin that happens to accept its bytes.
        image = Image.open(fh, formats=[source_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(_pixels_from_message(exc), limits, None) from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise _corrupt() from exc

    try:
        width, height = image.size
        # The header is all that has been read so far: refuse before allocating pixel memory.
        if width * height > limits.max_pixels:
            raise _bomb(width * height, limits, (width, height))
        if source_format == "JPEG" and max(width, height) > limits.max_side:
            # Shrink-on-load: libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below this size.
            ratio = limits.max_side / max(width, height)
            image.draft(image.mode, (math.ceil(width * ratio), math.ceil(height * ratio)))
        decoded_size = image.size
        try:
            image.load()
            # exif_transpose copies the whole image even when nothing turns (~8 ms at 12 MP):
            # only call it when the orientation asks for a turn.
            upright: Image.Image
            if image.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
                upright = image
            else:
                upright = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as exc:
            raise _corrupt() from exc
        except RuntimeError as exc:
            # libheif reports inconsistent files (e.g. an ispe box that disagrees with the
            # coded size) as RuntimeError; only the HEIF decoder is trusted to mean that.
            if source_format != "HEIF":
                raise
            raise _corrupt() from exc
    except BaseException:
        image.close()
        raise
    if upright is not image:
        image.close()

    swapped = decoded_size[0] != decoded_size[1] and upright.size == decoded_size[::-1]
    source_size = (height, width) if swapped else (width, height)
    return upright, source_size


def _pixels_from_message(exc: BaseException) -> int:
    # Pillow raises before exposing the size; its message is the only place the count appears.
    digits = [int(word) for word in str(exc).replace("(", " ").split() if word.isdigit()]
    return digits[0] if digits else 0


def _check_dimensions(size: tuple[int, int], limits: ProcessingLimits) -> None:
    width, height = size
    if min(width, height) < limits.min_side:
        raise PhotoRejected(
            RejectionCode.TOO_SMALL,
            f"The image is {width}x{height} pixels; photos must be at least "
            f"{limits.min_side}x{limits.min_side}.",
        )
    short_after = round(min(width, height) * min(1.0, limits.max_side / max(width, height)))
    if short_after < limits.min_side:
        raise PhotoRejected(
            RejectionCode.BAD_ASPECT_RATIO,
            f"The image is {width}x{height} pixels, too long and narrow: scaled to "
            f"{limits.max_side} pixels on its long side, its short side would be only "
            f"{short_after} pixels (at least {limits.min_side} needed). "
            "Crop it closer to a square.",
        )


def _downscale(
    image: Image.Image, source_size: tuple[int, int], limits: ProcessingLimits
) -> Image.Image:
    width, height = source_size
    if max(width, height) <= limits.max_side:
        return image
    # Computed from the source size, not the decoded one, so shrink-on-load cannot change it.
    ratio = limits.max_side / max(width, height)
    target = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    if image.size == target:
        return image
    flat = _flatten_mode(image)
    return flat.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _flatten_mode(image: Image.Image) -> Image.Image:
    """8-bit L, RGB or CMYK with any transparency composited on white; keeps the ICC profile."""
    icc = image.info.get("icc_profile")
    mode = image.mode
    if mode in ("L", "RGB", "CMYK") and "transparency" not in image.info:
        return image
    if mode in _HIGH_DEPTH_MODES:
        flat = Image.fromarray(_to_8bit(np.asarray(image)), mode="L")
    elif mode in _ALPHA_MODES or "transparency" in image.info:
        base = "L" if mode in _GREY_MODES else "RGB"
        rgba = image.convert("LA" if base == "L" else "RGBA")
        flat = Image.new(base, rgba.size, 255 if base == "L" else (255, 255, 255))
        flat.paste(rgba.convert(base), mask=rgba.getchannel("A"))
    elif mode in _GREY_MODES:
        flat = image.convert("L")
    else:
        flat = image.convert("RGB")
    if icc:
        flat.info["icc_profile"] = icc
    return flat


def _to_8bit(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    # Pillow's own I;16 -> L conversion clips at 255 instead of scaling, turning photos white.
    wide = np.clip(values.astype(np.int64), 0, 65535)
    scaled: npt.NDArray[np.uint8] = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return scaled


def _to_srgb(image: Image.Image) -> Image.Image:
    flat = _flatten_mode(image)
    icc = flat.info.get("icc_profile")
    if icc:
        converted = _apply_icc(flat, icc)
        if converted is not None:
            return converted
    return flat if flat.mode == "RGB" else flat.convert("RGB")


def _apply_icc(image: Image.Image, icc: bytes) -> Image.Image | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != _ICC_COLOUR_SPACE.get(image.mode):
            return None
        converted = ImageCms.profileToProfile(image, profile, _srgb_profile(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A broken or mismatched profile should not block an upload: fall back to treating the
        # pixels as sRGB, which is what browsers do with such files.
        return None
    return converted


def _preview(image: Image.Image) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps it at least
    `faces.FIRST_PASS_MAX_SIDE` on its long side (2048 px -> 512 px).

    reduce() averages whole boxes of pixels, and so does `phash` before its LANCZOS step: the
    hash of this copy matches the hash of `image` (0 bits apart on every fixture and
    benchmark output, sizes 512-2048 px).
    """
    factor = max(image.size) // faces.FIRST_PASS_MAX_SIDE
    return image.reduce(factor) if factor > 1 else image


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    # Pillow carries some metadata (JPEG comments) from `info` into the output: start clean.
    # The metadata is set aside rather than the pixels copied (9 MB at 2048 px, ~1 ms).
    info, image.info = image.info, {}
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="JPEG", quality=quality)
    finally:
        image.info = info
    return buffer.getvalue()


def _write_atomically(dst: Path, data: bytes) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
