"""Distinct one-face photos of one person, enough for a training set.

Copies of one shot are near-duplicates by design (the upload refuses them), so each photo
here is a different rotation, scale, mirror and background of the astronaut portrait.
"""

from __future__ import annotations

import io
from functools import cache

from PIL import Image, ImageOps

from avatar_api.photos.processing import phash, phash_distance
from tests.photos.fixtures import astronaut

BACKGROUNDS = [(40, 40, 40), (200, 200, 200), (30, 60, 120), (120, 30, 60), (60, 120, 30)]


@cache
def portrait_jpegs(count: int = 12) -> tuple[bytes, ...]:
    base = astronaut()
    images: list[bytes] = []
    hashes: list[str] = []
    i = 0
    while len(images) < count:
        if i > 400:
            raise AssertionError("could not make enough distinct portraits")
        angle = -30 + (i * 7) % 61
        scale = 1.0 + 0.1 * (i % 5)
        image = base.resize((int(512 * scale), int(512 * scale)))
        if i % 2:
            image = ImageOps.mirror(image)
        image = image.rotate(angle, expand=True, fillcolor=BACKGROUNDS[i % len(BACKGROUNDS)])
        canvas = Image.new("RGB", (800, 800), BACKGROUNDS[(i + 2) % len(BACKGROUNDS)])
        side = 560 + 40 * (i % 3)
        canvas.paste(image.resize((side, side)), (40 + 30 * (i % 4), 40 + 20 * (i % 2)))
        digest = phash(canvas)
        i += 1
        if any(phash_distance(digest, other) <= 12 for other in hashes):
            continue
        hashes.append(digest)
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return tuple(images)
