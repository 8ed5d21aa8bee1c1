"""The training archive: accepted photos in a zip with generated entry names.

Downloading, zipping and uploading overlap. A few photos download at once, the zip is
written from them in the photos' order as each one is complete, and the zip goes straight
into :meth:`ObjectStorage.put_stream`, which on S3 sends every part as soon as it is full.
Memory stays bounded whatever the photo count or size: at most ``DOWNLOAD_AHEAD`` photos
wait at a time, in memory up to 1 MiB each and in temporary files beyond, and the upload
holds a few parts.

The zip is written here rather than with :mod:`zipfile`, because on a stream that module
writes CRCs and sizes after each entry's data (a data descriptor), and streaming readers
refuse that for stored entries. A photo is complete before its entry starts, so its local
header already carries the real CRC and size. Entries are stored: JPEGs do not compress.
A fixed timestamp makes the archive a function of the photos alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from avatar_api.storage.base import KiB, MiB, ObjectStorage, StoredObject

DOWNLOAD_AHEAD = 4
"""Photos downloading, or downloaded and waiting for their turn in the zip, at once."""
ARCHIVE_PART_SIZE = 5 * MiB
"""The S3 minimum part size: the first part, and so the upload, starts the soonest."""
_CHUNK_SIZE = 1 * MiB
"""Photos up to this size stay in memory; larger ones wait on disk (bounded memory)."""
_READ_SIZE = 256 * KiB

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_OF_CENTRAL_DIRECTORY = struct.Struct("<IHHHHIIH")
_LOCAL_HEADER_SIGNATURE = 0x04034B50
_CENTRAL_HEADER_SIGNATURE = 0x02014B50
_END_SIGNATURE = 0x06054B50
_VERSION = 20  # 2.0: stored entries, no zip64
_STORED = 0  # compression method: none
_MADE_BY_UNIX = 3 << 8
_EXTERNAL_ATTRIBUTES = 0o100644 << 16  # a regular file, rw-r--r--
_DOS_TIME, _DOS_DATE = 0, (1 << 5) | 1  # 1980-01-01 00:00:00, the earliest DOS date
# Without zip64, sizes and offsets are 32-bit and 0xFFFFFFFF means "see zip64".
_ZIP_LIMIT = 0xFFFFFFFF
_MAX_ENTRIES = 0xFFFF


class ArchiveTooLarge(ValueError):
    """The photos do not fit in a zip without zip64 (4 GiB, 65535 entries)."""


def entry_name(number: int) -> str:
    """The name of the ``number``-th photo (from 1) in the archive."""
    return f"photo_{number:03d}.jpg"


@dataclass(frozen=True, slots=True)
class _Photo:
    size: int
    crc: int
    content: bytes | None
    """The photo itself when it fits in one chunk, else ``None``: it waits in ``path``."""
    path: Path


def _append(file: BinaryIO, chunk: bytes, crc: int) -> int:
    file.write(chunk)
    return zlib.crc32(chunk, crc)


async def _fetch(storage: ObjectStorage, key: str, path: Path) -> _Photo:
    """Download ``key`` and compute its CRC-32: into memory if small, else into ``path``."""
    async with contextlib.aclosing(storage.iter_chunks(key, chunk_size=_CHUNK_SIZE)) as chunks:
        first = await anext(chunks, b"")
        following = await anext(chunks, None)
        if following is None:
            # The usual case: a normalised photo is one chunk, so one thread hop for the
            # download and one for the CRC: thread hops, not bytes, are what costs CPU here.
            return _Photo(len(first), await asyncio.to_thread(zlib.crc32, first), first, path)
        file = await asyncio.to_thread(path.open, "xb")
        try:
            crc = await asyncio.to_thread(_append, file, first, 0)
            size = len(first)
            del first
            while following is not None:
                crc = await asyncio.to_thread(_append, file, following, crc)
                size += len(following)
                following = await anext(chunks, None)
        finally:
            await asyncio.to_thread(file.close)
    return _Photo(size, crc, None, path)


def _read_at(path: Path, offset: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(_READ_SIZE)


async def _content(photo: _Photo) -> AsyncGenerator[bytes, None]:
    if photo.content is not None:
        yield photo.content
        return
    offset = 0
    while offset < photo.size:
        chunk = await asyncio.to_thread(_read_at, photo.path, offset)
        if not chunk:
            raise OSError(f"{photo.path} shrank while it was zipped")
        offset += len(chunk)
        yield chunk
    await asyncio.to_thread(photo.path.unlink)


async def _zip_stream(
    storage: ObjectStorage, photo_keys: Sequence[str], work: Path
) -> AsyncGenerator[bytes, None]:
    """The archive's bytes, entry after entry, while the next photos download."""
    if len(photo_keys) > _MAX_ENTRIES:
        raise ArchiveTooLarge(f"{len(photo_keys)} photos; a zip holds at most {_MAX_ENTRIES}")
    # Started in order and awaited in order: entries keep the photos' order whichever
    # download finishes first, and no more than DOWNLOAD_AHEAD photos are held at once.
    fetches: deque[asyncio.Task[_Photo]] = deque()
    started = 0

    def fetch_more() -> None:
        nonlocal started
        while len(fetches) < DOWNLOAD_AHEAD and started < len(photo_keys):
            path = work / f"{started}.jpg"
            fetches.append(asyncio.create_task(_fetch(storage, photo_keys[started], path)))
            started += 1

    central = bytearray()
    offset = 0
    awaited: asyncio.Task[_Photo] | None = None  # out of ``fetches``, being awaited
    try:
        fetch_more()
        for number in range(1, len(photo_keys) + 1):
            awaited = fetches.popleft()
            photo = await awaited
            awaited = None
            fetch_more()
            name = entry_name(number).encode("ascii")
            end = offset + _LOCAL_HEADER.size + len(name) + photo.size
            if end >= _ZIP_LIMIT:
                raise ArchiveTooLarge("the photos exceed the 4 GiB a zip without zip64 holds")
            yield (
                _LOCAL_HEADER.pack(
                    _LOCAL_HEADER_SIGNATURE,
                    _VERSION,
                    0,  # flags: no data descriptor, ASCII name
                    _STORED,
                    _DOS_TIME,
                    _DOS_DATE,
                    photo.crc,
                    photo.size,
                    photo.size,
                    len(name),
                    0,
                )
                + name
            )
            async with contextlib.aclosing(_content(photo)) as chunks:
                async for chunk in chunks:
                    yield chunk
            central += (
                _CENTRAL_HEADER.pack(
                    _CENTRAL_HEADER_SIGNATURE,
                    _MADE_BY_UNIX | _VERSION,
                    _VERSION,
                    0,
                    _STORED,
                    _DOS_TIME,
                    _DOS_DATE,
                    photo.crc,
                    photo.size,
                    photo.size,
                    len(name),
                    0,
                    0,
                    0,
                    0,
                    _EXTERNAL_ATTRIBUTES,
                    offset,
                )
                + name
            )
            offset = end
        if offset + len(central) >= _ZIP_LIMIT:
            raise ArchiveTooLarge("the photos exceed the 4 GiB a zip without zip64 holds")
        count = len(photo_keys)
        yield bytes(central) + _END_OF_CENTRAL_DIRECTORY.pack(
            _END_SIGNATURE, 0, 0, count, count, len(central), offset, 0
        )
    finally:
        # On failure or early close: stop the downloads still running and wait for them,
        # so their files are closed before the work directory goes.
        running = [*fetches, *([awaited] if awaited is not None else [])]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def build_archive(
    storage: ObjectStorage, photo_keys: Sequence[str], archive_key: str
) -> StoredObject:
    """Zip the photos under ``photo_keys`` into ``archive_key`` as ``photo_001.jpg``...

    The entries follow ``photo_keys``' order. If a photo is missing
    (:class:`~avatar_api.storage.errors.StorageObjectNotFound`) or anything else fails,
    nothing is stored under ``archive_key`` (a multipart upload is aborted) and the
    temporary files are removed.
    """
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="avatar-archive-"))
    try:
        async with contextlib.aclosing(_zip_stream(storage, photo_keys, work)) as stream:
            return await storage.put_stream(
                archive_key, stream, content_type="application/zip", part_size=ARCHIVE_PART_SIZE
            )
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
