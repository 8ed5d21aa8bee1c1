"""build_archive against the real adapters: local files and S3 on a SeaweedFS server.

The archive must hold every photo byte for byte, in the order of the keys given, as stored
zip entries a plain zip reader opens; and a failure must leave nothing behind: no archive,
no unfinished multipart upload, no temporary file.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from avatar_api.storage import LocalStorage, ObjectStorage, S3Storage, StorageObjectNotFound
from avatar_api.storage.base import DEFAULT_CHUNK_SIZE
from avatar_api.training import archive
from avatar_api.training.archive import ArchiveTooLarge, build_archive, entry_name
from tests.s3server import S3Server, open_uploads, s3_server, s3_storage  # noqa: F401  (fixtures)

ARCHIVE_KEY = "tenants/t/avatars/a/archives/training.zip"
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # the zip format's local file header

# Some photos above the 1 MiB download chunk (they wait on disk, not in memory), an empty
# one, and more than 5 MiB in all, so the S3 upload is multipart with parts in flight.
PHOTO_SIZES = [300_000, 1_500_000, 0, 700_000, 2_200_000, 450_000, 1_000_000, 64_000]


@dataclass
class Backend:
    storage: ObjectStorage
    leftovers: Callable[[], Awaitable[list[str]]]
    """Unfinished multipart uploads (S3) or temporary files of writes (local)."""


def local_backend(root: Path) -> Backend:
    storage = LocalStorage(root, public_base_url="http://api.test", signing_secret=b"secret")

    def temp_files() -> list[str]:
        return [str(p) for p in root.rglob("*") if p.name.startswith(".~tmp-")]

    async def leftovers() -> list[str]:
        return await asyncio.to_thread(temp_files)

    return Backend(storage, leftovers)


def s3_backend(storage: S3Storage, server: S3Server) -> Backend:
    async def leftovers() -> list[str]:
        return await asyncio.to_thread(open_uploads, server, storage.bucket)

    return Backend(storage, leftovers)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    # Synchronous, like tests/storage: getfixturevalue() cannot set up an async fixture
    # from inside a running loop. Local-only runs (-k local) never start SeaweedFS.
    if request.param == "local":
        return local_backend(tmp_path / "storage")
    return s3_backend(request.getfixturevalue("s3_storage"), request.getfixturevalue("s3_server"))


@pytest.fixture
def temp_dir(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory build_archive's temporary files go to, checked empty afterwards.

    After ``backend``: the session's S3 server must not put its own files in it.
    """
    path = tmp_path / "temp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


async def files_in(directory: Path) -> list[Path]:
    return await asyncio.to_thread(lambda: list(directory.iterdir()))


async def store_photos(storage: ObjectStorage, sizes: list[int]) -> tuple[list[str], list[bytes]]:
    """Photos under keys in the reverse of their sorted order."""
    keys, contents = [], []
    for index, size in enumerate(sizes):
        key = f"tenants/t/avatars/a/photos/{len(sizes) - index:03d}.jpg"
        content = os.urandom(size)
        await storage.put_bytes(key, content, content_type="image/jpeg")
        keys.append(key)
        contents.append(content)
    return keys, contents


async def read_object(storage: ObjectStorage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.iter_chunks(key)])


def assert_archive_of(data: bytes, contents: list[bytes]) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None  # every CRC checks out
        infos = zf.infolist()
        assert [info.filename for info in infos] == [
            entry_name(n) for n in range(1, len(contents) + 1)
        ]
        for info, content in zip(infos, contents, strict=True):
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x08 == 0
            assert zf.read(info) == content
            # A streaming reader sees only the local header: it must carry the CRC and
            # sizes itself, with no data descriptor after the data.
            local = LOCAL_HEADER.unpack_from(data, info.header_offset)
            signature, flags, method, crc, compressed, size = (local[i] for i in (0, 2, 3, 6, 7, 8))
            assert (signature, flags & 0x08, method) == (0x04034B50, 0, zipfile.ZIP_STORED)
            assert (crc, compressed, size) == (zlib.crc32(content), len(content), len(content))


async def test_archive_holds_every_photo_in_order(backend: Backend, temp_dir: Path) -> None:
    storage = backend.storage
    keys, contents = await store_photos(storage, PHOTO_SIZES)

    stored = await build_archive(storage, keys, ARCHIVE_KEY)

    data = await read_object(storage, ARCHIVE_KEY)
    assert_archive_of(data, contents)
    assert (stored.key, stored.size, stored.content_type) == (
        ARCHIVE_KEY,
        len(data),
        "application/zip",
    )
    head = await storage.head(ARCHIVE_KEY)
    assert head is not None
    assert (head.size, head.content_type) == (len(data), "application/zip")
    if isinstance(storage, S3Storage):
        # 6.2 MB in parts of 5 MiB: the upload went up in two parts.
        assert stored.etag is not None
        assert stored.etag.endswith("-2")
        assert head.etag == stored.etag
    assert await files_in(temp_dir) == []
    assert await backend.leftovers() == []


async def test_small_archive_and_empty_archive(backend: Backend) -> None:
    storage = backend.storage
    keys, contents = await store_photos(storage, [1000, 2000])

    await build_archive(storage, keys, ARCHIVE_KEY)
    await build_archive(storage, [], "archives/empty.zip")

    assert_archive_of(await read_object(storage, ARCHIVE_KEY), contents)
    with zipfile.ZipFile(io.BytesIO(await read_object(storage, "archives/empty.zip"))) as zf:
        assert zf.infolist() == []


async def test_same_photos_make_the_same_archive(backend: Backend) -> None:
    storage = backend.storage
    keys, _ = await store_photos(storage, [5000, 70_000, 123])

    await build_archive(storage, keys, "archives/first.zip")
    await build_archive(storage, keys, "archives/second.zip")

    first = await read_object(storage, "archives/first.zip")
    assert first == await read_object(storage, "archives/second.zip")


async def test_missing_photo_stores_nothing_and_cleans_up(backend: Backend, temp_dir: Path) -> None:
    storage = backend.storage
    keys, _ = await store_photos(storage, PHOTO_SIZES)
    await storage.put_bytes(ARCHIVE_KEY, b"previous archive", content_type="application/zip")
    # After more than 5 MiB of photos: on S3 the multipart upload is under way by then.
    keys.insert(6, "tenants/t/avatars/a/photos/deleted-meanwhile.jpg")

    with pytest.raises(StorageObjectNotFound):
        await build_archive(storage, keys, ARCHIVE_KEY)

    assert await read_object(storage, ARCHIVE_KEY) == b"previous archive"
    assert await backend.leftovers() == []
    assert await files_in(temp_dir) == []


async def test_missing_first_photo_stores_nothing(backend: Backend, temp_dir: Path) -> None:
    storage = backend.storage
    keys, _ = await store_photos(storage, [1000, 2000])

    with pytest.raises(StorageObjectNotFound):
        await build_archive(storage, ["photos/missing.jpg", *keys], ARCHIVE_KEY)

    assert await storage.exists(ARCHIVE_KEY) is False
    assert await backend.leftovers() == []
    assert await files_in(temp_dir) == []


async def test_archive_too_large_for_a_plain_zip_is_refused(
    backend: Backend, temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = backend.storage
    keys, _ = await store_photos(storage, [1000, 2000, 3000])
    monkeypatch.setattr(archive, "_ZIP_LIMIT", 4000)  # 4 GiB of photos, in miniature

    with pytest.raises(ArchiveTooLarge):
        await build_archive(storage, keys, ARCHIVE_KEY)

    assert await storage.exists(ARCHIVE_KEY) is False
    assert await backend.leftovers() == []
    assert await files_in(temp_dir) == []


class SlowLocalStorage(LocalStorage):
    """Local storage whose downloads take time, counting how many run at once."""

    def __init__(self, root: Path, delays: dict[str, float]) -> None:
        super().__init__(root, public_base_url="http://api.test", signing_secret=b"secret")
        self.delays = delays
        self.running = 0
        self.most_running = 0

    async def iter_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delays.get(key, 0.0))
            async for chunk in super().iter_chunks(key, chunk_size=chunk_size):
                yield chunk
        finally:
            self.running -= 1


async def test_downloads_overlap_up_to_the_bound_and_keep_the_order(tmp_path: Path) -> None:
    storage = SlowLocalStorage(tmp_path / "storage", {})
    keys, contents = await store_photos(storage, [10_000 + i for i in range(12)])
    # Every other photo is slow, so downloads finish out of order.
    storage.delays.update(dict.fromkeys(keys[::2], 0.05))

    await build_archive(storage, keys, ARCHIVE_KEY)

    assert storage.most_running == archive.DOWNLOAD_AHEAD
    assert storage.running == 0
    with zipfile.ZipFile(io.BytesIO(await read_object(storage, ARCHIVE_KEY))) as zf:
        assert zf.namelist() == [entry_name(n) for n in range(1, 13)]
        assert [zf.read(name) for name in zf.namelist()] == contents


async def test_failed_download_stops_the_other_downloads(tmp_path: Path) -> None:
    storage = SlowLocalStorage(tmp_path / "storage", {})
    keys, _ = await store_photos(storage, [1000, 2000, 3000])
    storage.delays.update(dict.fromkeys(keys, 5.0))  # still running when the first fails

    with pytest.raises(StorageObjectNotFound):
        await asyncio.wait_for(build_archive(storage, ["photos/missing", *keys], "a.zip"), 4)

    assert storage.running == 0
