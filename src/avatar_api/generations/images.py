"""Keeping generated images: fal's output parsed, each image streamed into our storage.

fal's CDN URLs expire by account policy, so a generation is completed only once every image
is in our storage; callers always download our copy.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from avatar_api.storage.base import ObjectStorage
from avatar_api.storage_keys import generation_image_key

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGES = 4
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_FORMAT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


class InvalidGenerationOutput(ValueError):
    """fal's output does not have the documented shape."""


class ImageCopyFailed(Exception):
    """An image could not be copied; ``retriable`` says whether a later try may work."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True)
class OutputImage:
    url: str
    width: int | None
    height: int | None
    content_type: str | None
    nsfw: bool | None


@dataclass(frozen=True)
class GenerationOutput:
    images: list[OutputImage]
    seed: int | None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_output(output: Mapping[str, Any]) -> GenerationOutput:
    """``{images: [{url, width, height, content_type}], seed, has_nsfw_concepts}``."""
    images = output.get("images")
    if not isinstance(images, list) or not images:
        raise InvalidGenerationOutput("fal output has no images")
    if len(images) > MAX_IMAGES:
        raise InvalidGenerationOutput(f"fal output has {len(images)} images; at most {MAX_IMAGES}")
    flags = output.get("has_nsfw_concepts")
    parsed: list[OutputImage] = []
    for index, image in enumerate(images):
        if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
            raise InvalidGenerationOutput(f"fal output image {index} has no url")
        content_type = image.get("content_type")
        flag = flags[index] if isinstance(flags, list) and index < len(flags) else None
        parsed.append(
            OutputImage(
                url=image["url"],
                width=_int_or_none(image.get("width")),
                height=_int_or_none(image.get("height")),
                content_type=content_type if isinstance(content_type, str) else None,
                nsfw=flag if isinstance(flag, bool) else None,
            )
        )
    return GenerationOutput(images=parsed, seed=_int_or_none(output.get("seed")))


def _content_type(announced: str | None, served: str | None, output_format: str) -> str:
    for candidate in (announced, served):
        base = (candidate or "").split(";")[0].strip().lower()
        if base in _EXTENSIONS:
            return base
    if served and not served.lower().startswith(("image/", "application/octet-stream")):
        raise ImageCopyFailed(f"the image URL served {served!r}", retriable=False)
    return _FORMAT_TYPES.get(output_format, "image/jpeg")


async def copy_image(
    http: httpx.AsyncClient,
    storage: ObjectStorage,
    image: OutputImage,
    *,
    tenant_id: uuid.UUID,
    avatar_id: uuid.UUID,
    generation_id: uuid.UUID,
    index: int,
    output_format: str,
    require_https: bool,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> dict[str, Any]:
    """Stream one image into storage (memory stays flat) and describe the stored copy."""
    scheme = urlsplit(image.url).scheme
    if scheme not in ("http", "https") or (require_https and scheme != "https"):
        raise ImageCopyFailed(f"fal gave an image URL we do not fetch ({scheme}:)", retriable=False)
    try:
        async with http.stream("GET", image.url, follow_redirects=True, timeout=60.0) as response:
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise ImageCopyFailed(
                    f"image download answered {response.status_code}", retriable=True
                )
            if response.status_code != 200:
                raise ImageCopyFailed(
                    f"image download answered {response.status_code}", retriable=False
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageCopyFailed(
                    f"the image is {declared} bytes; the limit is {max_bytes}", retriable=False
                )
            content_type = _content_type(
                image.content_type, response.headers.get("content-type"), output_format
            )
            key = generation_image_key(
                tenant_id, avatar_id, generation_id, index, _EXTENSIONS[content_type]
            )

            async def capped() -> AsyncIterator[bytes]:
                seen = 0
                async for chunk in response.aiter_bytes():
                    seen += len(chunk)
                    if seen > max_bytes:
                        raise ImageCopyFailed(
                            f"the image exceeds the {max_bytes} bytes limit", retriable=False
                        )
                    yield chunk

            stored = await storage.put_stream(key, capped(), content_type=content_type)
    except httpx.HTTPError as exc:
        raise ImageCopyFailed(f"image download failed: {exc}", retriable=True) from exc
    if stored.size == 0:
        await storage.delete(key)
        raise ImageCopyFailed("the image download was empty", retriable=True)
    return {
        "key": key,
        "width": image.width,
        "height": image.height,
        "content_type": content_type,
        "size": stored.size,
        "nsfw": image.nsfw,
    }
