"""Copying results from fal's CDN: streamed, size-checked, memory stays flat."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.storage.local import LocalStorage
from avatar_api.training.results import ResultTooLarge, mirror

MiB = 1024 * 1024


def cdn(size: int, *, status: int = 200, declared: int | None = None) -> httpx.MockTransport:
    async def body() -> AsyncIterator[bytes]:
        chunk = b"\x5a" * MiB
        sent = 0
        while sent < size:
            piece = chunk[: min(MiB, size - sent)]
            sent += len(piece)
            yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(declared)} if declared is not None else {}
        return httpx.Response(status, headers=headers, content=body())

    return httpx.MockTransport(handler)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path, public_base_url="http://test", signing_secret=b"s")


async def test_large_file_is_streamed_with_flat_memory(storage: LocalStorage) -> None:
    size = 96 * MiB
    async with httpx.AsyncClient(transport=cdn(size)) as http:
        tracemalloc.start()
        try:
            stored = await mirror(
                http,
                storage,
                url="https://cdn.example/lora.safetensors",
                key="results/lora.safetensors",
                content_type="application/octet-stream",
                max_bytes=200 * MiB,
                expected_size=size,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert stored.size == size
    assert (await storage.head("results/lora.safetensors")) is not None
    # A 96 MiB file through a few MiB of buffers, not through memory.
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_size_limits(storage: LocalStorage) -> None:
    async with httpx.AsyncClient(transport=cdn(3 * MiB)) as http:
        with pytest.raises(ResultTooLarge):
            await mirror(
                http, storage, url="https://cdn/x", key="r/x", content_type="x", max_bytes=2 * MiB
            )
        with pytest.raises(RetryableJobError, match="announced"):
            await mirror(
                http,
                storage,
                url="https://cdn/x",
                key="r/y",
                content_type="x",
                max_bytes=8 * MiB,
                expected_size=3 * MiB + 1,
            )
    assert not await storage.exists("r/x")
    assert not await storage.exists("r/y")
    async with httpx.AsyncClient(transport=cdn(10, declared=10 * MiB)) as http:
        with pytest.raises(ResultTooLarge):
            await mirror(
                http, storage, url="https://cdn/x", key="r/z", content_type="x", max_bytes=MiB
            )


@pytest.mark.parametrize(("status", "error"), [(503, RetryableJobError), (404, PermanentJobError)])
async def test_cdn_errors(storage: LocalStorage, status: int, error: type[Exception]) -> None:
    async with httpx.AsyncClient(transport=cdn(10, status=status)) as http:
        with pytest.raises(error):
            await mirror(
                http, storage, url="https://cdn/x", key="r/e", content_type="x", max_bytes=MiB
            )
