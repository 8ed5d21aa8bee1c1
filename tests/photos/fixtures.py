"""The photo test set, built in code from real photographs shipped with scikit-image.

`EXPECTED` is known at import time (so tests can be parametrised by name); the files are
written by `build_photo_set`, once per directory. Sizes are (width, height).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import pillow_heif
import skimage.data
from PIL import ExifTags, Image, ImageCms, ImageEnhance

from avatar_api.photos.processing import NormalisedPhoto, PhotoRejected, RejectionCode

# Strings planted in metadata so tests can grep the output bytes for leaks.
SECRET_COMMENT = "leak-check: comment from the camera"
SECRET_XMP_MARKER = "leak-check-xmp-creator"
SECRET_MAKE = "LeakCheckCam"
TRAILING_PAYLOAD = b"PK\x03\x04<html>leak-check trailing payload</html>"
GPS_INFO = {
    ExifTags.GPS.GPSLatitudeRef: "N",
    ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
    ExifTags.GPS.GPSLongitudeRef: "E",
    ExifTags.GPS.GPSLongitude: (13.0, 24.0, 1.0),
}


@dataclass(frozen=True)
class Expected:
    """What the pipeline must conclude about a fixture.

    `faces` is None where the file is refused; `rejection` is None where it is accepted.
    """

    faces: int | None = None
    rejection: RejectionCode | None = None
    source_format: str | None = None
    output_size: tuple[int, int] | None = None
    note: str = ""


class PhotoFixture(NamedTuple):
    path: Path
    expected: Expected


# What the pipeline made of a fixture: its facts, or the reason it was refused.
Outcome = NormalisedPhoto | PhotoRejected


# ---------------------------------------------------------------------------------------------
# Source photographs


@cache
def _skimage_photo(name: str) -> Image.Image:
    # getattr: scikit-image's loaders are untyped, and mypy --strict rejects calling them.
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def astronaut() -> Image.Image:
    """Eileen Collins, public domain, 512x512, one face."""
    return _skimage_photo("astronaut")


def cameraman() -> Image.Image:
    """The cameraman, CC0, 512x512 grey, one smallish face: a second, different person."""
    return _skimage_photo("camera")


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.LANCZOS)


def _jpeg(image: Image.Image, quality: int = 92, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **params)
    return buffer.getvalue()


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _jittered(image: Image.Image) -> Image.Image:
    brighter = ImageEnhance.Brightness(image).enhance(1.08)
    paler = ImageEnhance.Color(brighter).enhance(0.85)
    return ImageEnhance.Contrast(paler).enhance(1.05)


def _rotated(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))


def upright_portrait() -> Image.Image:
    """600x800 portrait crop of the astronaut: orientation mistakes change its shape."""
    return astronaut().crop((64, 0, 448, 512)).resize((600, 800), Image.Resampling.LANCZOS)


def _exif_with_gps(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = SECRET_MAKE
    exif[ExifTags.Base.DateTime] = "2026:11:02 10:11:12"
    exif[ExifTags.IFD.GPSInfo] = dict(GPS_INFO)
    return exif


def _xmp() -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:creator>{SECRET_XMP_MARKER}</dc:creator>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def _swapped_primaries_profile() -> bytes:
    """An RGB profile whose red and blue primaries are swapped relative to sRGB.

    Pixels stored with R and B swapped and tagged with this profile look right only if the
    profile is honoured, which makes ICC handling visible in a pixel comparison.
    """
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack_from(">I", data, 128)[0]
    entries = {}
    for i in range(count):
        sig, offset, size = struct.unpack_from(">4sII", data, 132 + 12 * i)
        entries[sig] = (i, offset, size)
    red_index, red_offset, red_size = entries[b"rXYZ"]
    blue_index, blue_offset, blue_size = entries[b"bXYZ"]
    struct.pack_into(">4sII", data, 132 + 12 * red_index, b"rXYZ", blue_offset, blue_size)
    struct.pack_into(">4sII", data, 132 + 12 * blue_index, b"bXYZ", red_offset, red_size)
    data[84:100] = bytes(16)  # the profile ID is an MD5 of the content, now stale
    return bytes(data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A valid-looking greyscale PNG whose header claims width x height."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (rows * (width + 1)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------
# Builders: each returns the file's bytes.


def _astronaut_jpeg() -> bytes:
    return _jpeg(astronaut(), 95)


def _astronaut_rgba() -> bytes:
    rgba = astronaut().convert("RGBA")
    alpha = np.full((512, 512), 255, dtype=np.uint8)
    alpha[:64, :64] = 0  # a fully transparent corner, far from the face
    alpha[:64, -64:] = 128
    rgba.putalpha(Image.fromarray(alpha))
    return _encode(rgba, "PNG")


def _astronaut_icc_swapped() -> bytes:
    red, green, blue = astronaut().split()
    stored = Image.merge("RGB", (blue, green, red))
    return _jpeg(stored, 95, icc_profile=_swapped_primaries_profile())


def _astronaut_16bit() -> bytes:
    grey = np.asarray(astronaut().convert("L"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(grey), "PNG")


def _exif6_gps_jpeg() -> bytes:
    stored = upright_portrait().transpose(Image.Transpose.ROTATE_90)
    return _jpeg(stored, 92, exif=_exif_with_gps(6).tobytes(), comment=SECRET_COMMENT, xmp=_xmp())


def _heic_rotated_gps() -> bytes:
    stored = upright_portrait().transpose(Image.Transpose.ROTATE_90)
    heif = pillow_heif.from_pillow(stored)
    buffer = io.BytesIO()
    heif.save(
        buffer,
        format="HEIF",
        exif=_exif_with_gps(6).tobytes(),
        xmp=_xmp(),
        enc_params={"preset": "ultrafast"},
    )
    return buffer.getvalue()


def _twelve_megapixel() -> bytes:
    canvas = Image.new("RGB", (4000, 3000), (90, 110, 140))
    canvas.paste(astronaut().resize((3000, 3000), Image.Resampling.BICUBIC), (500, 0))
    return _jpeg(canvas, 90)


def _two_people() -> bytes:
    canvas = Image.new("RGB", (1024, 512))
    canvas.paste(astronaut(), (0, 0))
    canvas.paste(cameraman(), (512, 0))
    return _jpeg(canvas)


def _two_astronauts() -> bytes:
    canvas = Image.new("RGB", (1024, 512))
    canvas.paste(astronaut(), (0, 0))
    canvas.paste(_jittered(astronaut()).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    return _jpeg(canvas)


def _tiny_face() -> bytes:
    canvas = _skimage_photo("rocket").resize((1200, 1800), Image.Resampling.BICUBIC)
    canvas.paste(astronaut().resize((320, 320), Image.Resampling.LANCZOS), (820, 1380))
    return _jpeg(canvas)


def _noise() -> bytes:
    rng = np.random.default_rng(1234)
    return _jpeg(Image.fromarray(rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)))


def _truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _random_bytes() -> bytes:
    return np.random.default_rng(99).integers(0, 256, 4096, dtype=np.uint8).tobytes()


_Builder = Callable[[], bytes]
_SPECS: dict[str, tuple[str, Expected, _Builder]] = {
    # --- one person -----------------------------------------------------------------------
    "astronaut_jpeg": (
        "astronaut.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512)),
        _astronaut_jpeg,
    ),
    "astronaut_png": (
        "astronaut.png",
        Expected(faces=1, source_format="PNG", output_size=(512, 512)),
        lambda: _encode(astronaut(), "PNG"),
    ),
    "astronaut_webp": (
        "astronaut.webp",
        Expected(faces=1, source_format="WEBP", output_size=(512, 512)),
        lambda: _encode(astronaut(), "WEBP", quality=90),
    ),
    "astronaut_large": (
        "astronaut_large.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(1024, 1024)),
        lambda: _jpeg(_scaled(astronaut(), 2.0)),
    ),
    "astronaut_flipped": (
        "astronaut_flipped.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(768, 768)),
        lambda: _jpeg(_scaled(astronaut(), 1.5).transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ),
    "astronaut_rot8": (
        "astronaut_rot8.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(768, 768)),
        lambda: _jpeg(_rotated(_scaled(astronaut(), 1.5), 8)),
    ),
    "astronaut_rot_minus12": (
        "astronaut_rot_minus12.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(768, 768)),
        lambda: _jpeg(_rotated(_scaled(astronaut(), 1.5), -12)),
    ),
    "astronaut_face_crop": (
        "astronaut_face_crop.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(540, 600)),
        lambda: _jpeg(astronaut().crop((100, 0, 370, 300)).resize((540, 600))),
    ),
    "astronaut_wide_crop": (
        "astronaut_wide_crop.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(768, 570)),
        lambda: _jpeg(astronaut().crop((0, 0, 512, 380)).resize((768, 570))),
    ),
    "astronaut_jittered": (
        "astronaut_jittered.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="near duplicate"),
        lambda: _jpeg(_jittered(astronaut()), 85),
    ),
    "astronaut_recompressed": (
        "astronaut_recompressed.webp",
        Expected(faces=1, source_format="WEBP", output_size=(700, 700), note="near duplicate"),
        lambda: _encode(_scaled(astronaut(), 700 / 512), "WEBP", quality=60),
    ),
    "astronaut_grey": (
        "astronaut_grey.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="mode L"),
        lambda: _jpeg(astronaut().convert("L")),
    ),
    "astronaut_rgba": (
        "astronaut_rgba.png",
        Expected(faces=1, source_format="PNG", output_size=(512, 512), note="mode RGBA"),
        _astronaut_rgba,
    ),
    "astronaut_palette": (
        "astronaut_palette.png",
        Expected(faces=1, source_format="PNG", output_size=(512, 512), note="mode P"),
        lambda: _encode(astronaut().quantize(256), "PNG"),
    ),
    "astronaut_grey_alpha": (
        "astronaut_la.png",
        Expected(faces=1, source_format="PNG", output_size=(512, 512), note="mode LA"),
        lambda: _encode(astronaut().convert("LA"), "PNG"),
    ),
    "astronaut_icc_swapped": (
        "astronaut_icc.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="non-sRGB ICC"),
        _astronaut_icc_swapped,
    ),
    "astronaut_cmyk": (
        "astronaut_cmyk.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="CMYK JPEG"),
        lambda: _jpeg(astronaut().convert("CMYK"), 95),
    ),
    "astronaut_16bit": (
        "astronaut_16bit.png",
        Expected(faces=1, source_format="PNG", output_size=(512, 512), note="mode I;16"),
        _astronaut_16bit,
    ),
    "exif6_gps_jpeg": (
        "portrait_exif6_gps.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(600, 800), note="EXIF rotate 90"),
        _exif6_gps_jpeg,
    ),
    "heic_rotated_gps": (
        "portrait_rotated_gps.heic",
        Expected(faces=1, source_format="HEIF", output_size=(600, 800), note="HEIC rotate 90"),
        _heic_rotated_gps,
    ),
    "twelve_megapixel": (
        "twelve_megapixel.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(2048, 1536), note="4000x3000"),
        _twelve_megapixel,
    ),
    "png_named_jpg": (
        "really_a_png.jpg",
        Expected(faces=1, source_format="PNG", output_size=(512, 512), note="name lies"),
        lambda: _encode(astronaut(), "PNG"),
    ),
    "jpeg_trailing_payload": (
        "polyglot.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="data after EOI"),
        lambda: _astronaut_jpeg() + TRAILING_PAYLOAD,
    ),
    "cameraman": (
        "cameraman.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(512, 512), note="other person"),
        lambda: _jpeg(cameraman()),
    ),
    # --- several or small faces ----------------------------------------------------------
    "two_people": (
        "two_people.jpg",
        Expected(faces=2, source_format="JPEG", output_size=(1024, 512)),
        _two_people,
    ),
    "two_astronauts": (
        "two_astronauts.jpg",
        Expected(faces=2, source_format="JPEG", output_size=(1024, 512)),
        _two_astronauts,
    ),
    "tiny_face": (
        "tiny_face.jpg",
        Expected(faces=1, source_format="JPEG", output_size=(1200, 1800), note="face < 1%"),
        _tiny_face,
    ),
    # --- no face ---------------------------------------------------------------------------
    "coffee": (
        "coffee.jpg",
        Expected(faces=0, source_format="JPEG", output_size=(900, 600)),
        lambda: _jpeg(_scaled(_skimage_photo("coffee"), 1.5)),
    ),
    "cat": (
        "chelsea_cat.jpg",
        Expected(faces=0, source_format="JPEG", output_size=(902, 600), note="a cat"),
        lambda: _jpeg(_scaled(_skimage_photo("chelsea"), 2.0)),
    ),
    "rocket": (
        "rocket.png",
        Expected(faces=0, source_format="PNG", output_size=(960, 640)),
        lambda: _encode(_scaled(_skimage_photo("rocket"), 1.5), "PNG", compress_level=1),
    ),
    "brick_texture": (
        "brick.jpg",
        Expected(faces=0, source_format="JPEG", output_size=(512, 512)),
        lambda: _jpeg(_skimage_photo("brick")),
    ),
    "noise": (
        "noise.jpg",
        Expected(faces=0, source_format="JPEG", output_size=(768, 768)),
        _noise,
    ),
    "hubble": (
        "hubble.webp",
        Expected(faces=0, source_format="WEBP", output_size=(1000, 872)),
        lambda: _encode(_skimage_photo("hubble_deep_field"), "WEBP", quality=85),
    ),
    # --- refused: too small or the wrong shape ----------------------------------------------
    "too_small": (
        "small.jpg",
        Expected(rejection=RejectionCode.TOO_SMALL, note="400x300"),
        lambda: _jpeg(astronaut().resize((400, 300))),
    ),
    "coffee_original": (
        "coffee_original.png",
        Expected(rejection=RejectionCode.TOO_SMALL, note="600x400"),
        lambda: _encode(_skimage_photo("coffee"), "PNG"),
    ),
    "panorama": (
        "panorama.jpg",
        Expected(rejection=RejectionCode.BAD_ASPECT_RATIO, note="4000x600"),
        lambda: _jpeg(Image.new("RGB", (4000, 600), (40, 90, 160))),
    ),
    # --- refused: hostile or broken ----------------------------------------------------------
    "truncated_jpeg": (
        "truncated.jpg",
        Expected(rejection=RejectionCode.CORRUPT_IMAGE),
        lambda: _truncated(_jpeg(_scaled(astronaut(), 2.0)), 0.6),
    ),
    "truncated_png": (
        "truncated.png",
        Expected(rejection=RejectionCode.CORRUPT_IMAGE),
        lambda: _truncated(_encode(astronaut(), "PNG"), 0.6),
    ),
    "truncated_heic": (
        "truncated.heic",
        Expected(rejection=RejectionCode.CORRUPT_IMAGE),
        lambda: _truncated(_heic_rotated_gps(), 0.5),
    ),
    "png_claims_20000": (
        "bomb_header_20000.png",
        Expected(rejection=RejectionCode.DECOMPRESSION_BOMB, note="Pillow's own limit"),
        lambda: _png_claiming(20000, 20000),
    ),
    "png_claims_7000": (
        "bomb_header_7000.png",
        Expected(rejection=RejectionCode.DECOMPRESSION_BOMB, note="under Pillow's limit"),
        lambda: _png_claiming(7000, 7000),
    ),
    "png_real_bomb": (
        "bomb_real.png",
        Expected(rejection=RejectionCode.DECOMPRESSION_BOMB, note="48 MP of zeros, ~50 kB"),
        lambda: _png_claiming(8000, 6000, rows=6000),
    ),
    "random_bytes": (
        "random.jpg",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT),
        _random_bytes,
    ),
    "text_named_png": (
        "notes.png",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT),
        lambda: b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
    ),
    "empty": (
        "empty.jpg",
        Expected(rejection=RejectionCode.EMPTY_FILE),
        lambda: b"",
    ),
    "gif": (
        "astronaut.gif",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT),
        lambda: _encode(astronaut(), "GIF"),
    ),
    "bmp": (
        "astronaut.bmp",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT),
        lambda: _encode(astronaut(), "BMP"),
    ),
    "tiff": (
        "astronaut.tiff",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT),
        lambda: _encode(astronaut(), "TIFF"),
    ),
    "avif": (
        "astronaut.avif",
        Expected(rejection=RejectionCode.UNSUPPORTED_FORMAT, note="HEIF container, AV1"),
        lambda: _encode(astronaut(), "AVIF", quality=60, speed=10),
    ),
}

EXPECTED: Mapping[str, Expected] = MappingProxyType(
    {name: expected for name, (_, expected, _) in _SPECS.items()}
)
ACCEPTED = tuple(name for name, expected in EXPECTED.items() if expected.rejection is None)
REFUSED = tuple(name for name, expected in EXPECTED.items() if expected.rejection is not None)
WITH_FACE_COUNT = tuple(name for name, expected in EXPECTED.items() if expected.faces is not None)


@cache
def build_photo_set(directory: Path) -> Mapping[str, PhotoFixture]:
    """Write every fixture into `directory` (once per directory) and map names to them."""
    directory.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, (filename, expected, builder) in _SPECS.items():
        path = directory / filename
        path.write_bytes(builder())
        built[name] = PhotoFixture(path, expected)
    return MappingProxyType(built)
