"""S3Storage.put_stream's multipart upload: parts go up while the stream goes on, a few
at a time, and a failed part aborts the whole upload. Against a real SeaweedFS server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from avatar_api.storage import S3Storage, StorageOperationFailed
from avatar_api.storage.base import MiB
from tests.s3server import S3Server, drop_bucket, open_uploads

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef


class RecordingS3Storage(S3Storage):
    """S3Storage that records its part uploads, and can be told to fail or slow one."""

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self.part_started = asyncio.Event()
        self.started: list[int] = []
        self.running = 0
        self.most_running = 0
        self.fail_part: int | None = None
        self.part_delay = 0.0

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes
    ) -> CompletedPartTypeDef:
        self.started.append(number)
        self.part_started.set()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.part_delay)
            if number == self.fail_part:
                raise StorageOperationFailed(f"part {number} refused")
            return await super()._upload_part(key, upload_id, number, body)
        finally:
            self.running -= 1


@pytest_asyncio.fixture
async def storage(s3_server: S3Server) -> AsyncIterator[RecordingS3Storage]:
    storage = RecordingS3Storage(f"test-{uuid.uuid4().hex[:16]}", **s3_server.connection_options())
    await storage.ensure_bucket()
    try:
        yield storage
    finally:
        await storage.close()
        await asyncio.to_thread(drop_bucket, s3_server, storage.bucket)


async def stream(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


async def read_all(storage: S3Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.iter_chunks(key)])


async def test_first_part_goes_up_before_the_stream_ends(storage: RecordingS3Storage) -> None:
    first, rest = os.urandom(5 * MiB + 1), os.urandom(3 * MiB)

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        # The adapter knows part 1 is full and not the last: it must not wait for more.
        await asyncio.wait_for(storage.part_started.wait(), timeout=10)
        yield rest

    stored = await storage.put_stream(
        "a/b.zip", chunks(), content_type="application/zip", part_size=5 * MiB
    )

    assert stored.etag is not None
    assert stored.etag.endswith("-2")
    assert stored.size == len(first) + len(rest)
    assert await read_all(storage, "a/b.zip") == first + rest


async def test_parts_in_flight_are_bounded(storage: RecordingS3Storage) -> None:
    storage.part_delay = 0.2  # parts pile up unless the adapter waits for a free slot
    data = os.urandom(26 * MiB)

    stored = await storage.put_stream(
        "big/six-parts.bin",
        stream(data, 3 * MiB),
        content_type="application/octet-stream",
        part_size=5 * MiB,
    )

    assert storage.most_running == 2  # the default stream_concurrency
    assert sorted(storage.started) == [1, 2, 3, 4, 5, 6]
    assert stored.etag is not None
    assert stored.etag.endswith("-6")
    digest = hashlib.sha256(await read_all(storage, "big/six-parts.bin")).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()


async def test_failed_part_aborts_the_upload(
    storage: RecordingS3Storage, s3_server: S3Server
) -> None:
    await storage.put_bytes("a/obj", b"previous", content_type="text/plain")
    storage.fail_part = 2
    produced = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(40):
            produced += 1
            yield os.urandom(MiB)

    with pytest.raises(StorageOperationFailed, match="part 2 refused"):
        await storage.put_stream("a/obj", chunks(), content_type="text/plain", part_size=5 * MiB)

    assert await read_all(storage, "a/obj") == b"previous"
    assert await asyncio.to_thread(open_uploads, s3_server, storage.bucket) == []
    # The failure stopped the stream early instead of uploading all 40 MiB first.
    assert produced < 40


async def test_part_size_below_the_s3_minimum_is_refused(storage: RecordingS3Storage) -> None:
    with pytest.raises(ValueError, match="5 MiB"):
        await storage.put_stream("a/x", stream(b"x", 1), content_type="text/plain", part_size=MiB)
