"""The object storage port: what the service needs from a blob store, and nothing more.

Two adapters implement it: :class:`~avatar_api.storage.local.LocalStorage` (the embedded
default, a directory on disk) and :class:`~avatar_api.storage.s3.S3Storage` (AWS S3 and
compatible servers: MinIO, SeaweedFS, R2). Tests use the real adapters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from avatar_api.storage.errors import InvalidStorageKey

KiB = 1024
MiB = 1024 * KiB

DEFAULT_CHUNK_SIZE = 1 * MiB
MAX_KEY_LENGTH = 512
# NAME_MAX on the filesystems LocalStorage runs on; S3 has no such limit, but a key that
# only one adapter can store would break the moment a deployment switches backends.
MAX_KEY_SEGMENT_LENGTH = 255
# SigV4 presigned URLs cannot live longer than 7 days; the local adapter keeps the same
# bound so both behave alike.
MAX_URL_EXPIRES_IN = 7 * 24 * 3600
MAX_DOWNLOAD_FILENAME_LENGTH = 255

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the store knows about one object."""

    key: str
    size: int
    content_type: str
    etag: str | None = None
    """Backend entity tag without quotes (S3); ``-N`` suffixed for multipart uploads."""
    sha256: str | None = None
    """Hex SHA-256 of the content, when the adapter computed it while writing."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidStorageKey`.

    A key is 1-512 characters of ``[A-Za-z0-9._/-]``, ``/``-separated segments, none of
    them empty, ``.`` or ``..``, none longer than 255 characters. The rules make a key
    a safe relative path on every filesystem and an unambiguous S3 key, so no adapter
    needs escaping.
    """
    if not key:
        raise InvalidStorageKey(key, "empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidStorageKey(key, f"longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise InvalidStorageKey(key, "only letters, digits and . _ / - are allowed")
    if key.startswith("/"):
        raise InvalidStorageKey(key, "must not start with /")
    for segment in key.split("/"):
        if not segment:
            raise InvalidStorageKey(key, "empty path segment")
        if segment in {".", ".."}:
            raise InvalidStorageKey(key, "'.' and '..' segments are not allowed")
        if len(segment) > MAX_KEY_SEGMENT_LENGTH:
            raise InvalidStorageKey(
                key, f"a segment is longer than {MAX_KEY_SEGMENT_LENGTH} characters"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid key prefix, else raise :class:`InvalidStorageKey`.

    A prefix follows the key rules except that it may end with ``/``. The empty prefix
    is refused: "delete everything" must not be one missing path component away.
    """
    try:
        validate_key(prefix.removesuffix("/"))
    except InvalidStorageKey as exc:
        raise InvalidStorageKey(prefix, exc.reason) from None
    return prefix


def check_expires_in(expires_in: int) -> int:
    """Return ``expires_in`` if it is a usable URL lifetime in seconds, else raise."""
    if not 1 <= expires_in <= MAX_URL_EXPIRES_IN:
        raise ValueError(f"expires_in must be between 1 and {MAX_URL_EXPIRES_IN} seconds")
    return expires_in


def validate_download_filename(filename: str) -> str:
    """Return ``filename`` if it can be offered as a download name, else raise ValueError.

    Control characters would let a caller inject header lines, and path separators are
    meaningless (or dangerous) in a suggested file name.
    """
    if not filename or len(filename) > MAX_DOWNLOAD_FILENAME_LENGTH:
        raise ValueError(
            f"download filename must be 1-{MAX_DOWNLOAD_FILENAME_LENGTH} characters long"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in filename):
        raise ValueError("download filename must not contain control characters")
    if "/" in filename or "\\" in filename:
        raise ValueError("download filename must not contain path separators")
    return filename


def content_disposition(filename: str) -> str:
    """``Content-Disposition: attachment`` naming ``filename`` (RFC 6266 / RFC 5987)."""
    ascii_fallback = "".join(
        ch if " " <= ch <= "~" and ch not in {'"', "\\", "%"} else "_" for ch in filename
    )
    return f"attachment; filename=\"{ascii_fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class ObjectStorage(Protocol):
    """A flat namespace of immutable-ish blobs addressed by validated string keys.

    Every method validates its key first and raises
    :class:`~avatar_api.storage.errors.InvalidStorageKey` for an unsafe one. Writes
    replace the whole object atomically: a reader sees the old content or the new one,
    never a partial write, and a failed write leaves the old content in place. No method
    blocks the event loop.
    """

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Store the content of the local file ``path`` under ``key``, streamed.

        Large files go up in parts (S3 multipart), so memory use does not grow with size.
        """
        ...

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        part_size: int | None = None,
    ) -> StoredObject:
        """Store the concatenated ``chunks`` under ``key`` with bounded memory.

        Adapters that upload in parts (S3 multipart) send each part while ``chunks`` goes
        on. ``part_size`` (at least 5 MiB on S3) overrides the adapter's default: smaller
        parts start the upload sooner, larger ones take fewer requests. Adapters that
        write in one piece ignore it.

        If ``chunks`` raises (or the task is cancelled), nothing is stored, the previous
        object under ``key`` (if any) is untouched and partial uploads are cleaned up.
        """
        ...

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Store ``data`` under ``key``."""
        ...

    def iter_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        """Stream the object's content in chunks of at most ``chunk_size`` bytes.

        Raises :class:`~avatar_api.storage.errors.StorageObjectNotFound` (on the first
        iteration) when no object is stored under ``key``. Close the iterator
        (``contextlib.aclosing``) when stopping early, so the backend stream is released.
        """
        ...

    async def download_to(self, key: str, path: Path) -> None:
        """Write the object's content to the local file ``path``, replacing it atomically.

        Raises :class:`~avatar_api.storage.errors.StorageObjectNotFound` and leaves
        ``path`` alone when no object is stored under ``key``.
        """
        ...

    async def head(self, key: str) -> StoredObject | None:
        """Describe the object under ``key``, or ``None`` when there is none."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete the object under ``key``; ``True`` if there was one. Idempotent."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many.

        ``prefix`` is a plain string prefix, as in S3: ``"avatars/1"`` also matches
        ``"avatars/10/x"``; end it with ``/`` to mean one "directory".
        """
        ...

    async def download_url(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        """A URL that lets anyone holding it GET the object for ``expires_in`` seconds.

        With ``filename``, the response carries ``Content-Disposition: attachment`` with
        that name. The object's existence is not checked: the URL answers 404 if it is
        missing when fetched. Raises ``ValueError`` for a lifetime outside 1 s - 7 days
        or an unusable filename.
        """
        ...
