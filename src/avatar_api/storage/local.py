"""Local filesystem adapter: objects are files under one root directory.

Layout: the object ``a/b.jpg`` is the file ``ROOT/a/b.jpg``; its metadata (content
type, size, SHA-256) is ``ROOT/~meta/a/b.jpg``. ``~`` cannot occur in a key, so neither
the metadata tree nor the ``.~tmp-*`` files of writes in progress can collide with an
object. Every write goes to a temporary file in the target directory and is renamed into
place, so readers never see a partial object.

Download URLs point at the API itself (``GET /v1/files/{key}``, see
:mod:`avatar_api.storage.router`) and carry an HMAC-SHA256 signature over the key, the
expiry time and the optional download filename.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import mimetypes
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from avatar_api.storage.base import (
    DEFAULT_CHUNK_SIZE,
    StoredObject,
    check_expires_in,
    validate_download_filename,
    validate_key,
    validate_prefix,
)
from avatar_api.storage.errors import InvalidStorageKey, StorageObjectNotFound

_META_DIR = "~meta"
_TMP_PREFIX = ".~tmp-"
_COPY_BUFFER = 1024 * 1024
_FALLBACK_CONTENT_TYPE = "application/octet-stream"


def _is_object_name(name: str) -> bool:
    # Temporary files and the metadata directory contain "~", which keys cannot.
    return "~" not in name


def _signed_message(key: str, expires: int, filename: str | None) -> bytes:
    message = f"{key}\n{expires}"
    if filename is not None:
        message += f"\n{filename}"
    return message.encode("utf-8")


def sign_file_url(secret: bytes, key: str, expires: int, filename: str | None) -> str:
    """Hex HMAC-SHA256 that authorises ``GET /v1/files/{key}`` until ``expires``."""
    return hmac.new(secret, _signed_message(key, expires, filename), hashlib.sha256).hexdigest()


def verify_signed_file_url(
    secret: bytes,
    key: str,
    expires: int,
    signature: str,
    filename: str | None,
    now: float,
) -> bool:
    """Whether ``signature`` authorises fetching ``key`` (with ``filename``) at ``now``.

    ``expires`` is a Unix time; the URL is valid up to and including that second.
    """
    try:
        validate_key(key)
    except InvalidStorageKey:
        return False
    expected = sign_file_url(secret, key, expires, filename).encode("ascii")
    # Encoding first: compare_digest refuses non-ASCII str, and the signature comes
    # straight from a query string.
    signature_ok = hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
    return signature_ok and now <= expires


def _guess_content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or _FALLBACK_CONTENT_TYPE


def _create_temp_file(directory: Path) -> tuple[Path, BinaryIO]:
    for _ in range(3):
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            return temp, temp.open("xb")
        except FileNotFoundError:
            # A concurrent delete may prune the directory between mkdir and open.
            continue
    raise FileNotFoundError(f"could not create a temporary file in {directory}")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _AtomicWriter:
    """Writes one object into a temporary file and renames it into place on commit.

    Synchronous on purpose: every method runs in a worker thread.
    """

    def __init__(self, data_path: Path, meta_path: Path) -> None:
        self._data_path = data_path
        self._meta_path = meta_path
        self._temp, self._file = _create_temp_file(data_path.parent)
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def copy_from(self, source: Path) -> None:
        with source.open("rb") as src:
            while chunk := src.read(_COPY_BUFFER):
                self.write(chunk)

    def commit(self, key: str, content_type: str) -> StoredObject:
        try:
            self._file.flush()
            # Without fsync a crash after the rename can leave an empty file under the
            # final name on some filesystems (ext4 delayed allocation).
            os.fsync(self._file.fileno())
            self._file.close()
            stored = StoredObject(
                key=key, size=self._size, content_type=content_type, sha256=self._hash.hexdigest()
            )
            meta = {"content_type": content_type, "size": stored.size, "sha256": stored.sha256}
            meta_temp, meta_file = _create_temp_file(self._meta_path.parent)
            try:
                with meta_file:
                    meta_file.write(json.dumps(meta).encode("utf-8"))
                os.replace(meta_temp, self._meta_path)
            except BaseException:
                _unlink_quietly(meta_temp)
                raise
            # Metadata first: a reader that sees the new data also sees its metadata.
            # A crash in between leaves metadata whose size check fails (see _head).
            os.replace(self._temp, self._data_path)
        except BaseException:
            self.discard()
            raise
        return stored

    def discard(self) -> None:
        self._file.close()
        _unlink_quietly(self._temp)


class LocalStorage:
    """:class:`~avatar_api.storage.base.ObjectStorage` on a local directory.

    ``public_base_url`` is the API's externally reachable base URL; download URLs are
    ``{public_base_url}/v1/files/{key}?expires=...&signature=...``. ``clock`` returns
    the current Unix time (injectable so tests can move time).

    Limitation of a filesystem: a key cannot be both an object and a "directory" of
    other keys (``a/b`` and ``a/b/c``); such a write fails with ``OSError``.
    """

    def __init__(
        self,
        root: Path,
        *,
        public_base_url: str,
        signing_secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not signing_secret:
            raise ValueError("signing_secret must not be empty")
        # Runs once at start-up, before serving, so the blocking mkdir/resolve is fine.
        root.mkdir(parents=True, exist_ok=True)
        self._root = root.resolve()
        self._meta_root = self._root / _META_DIR
        self._public_base_url = public_base_url.rstrip("/")
        self._secret = signing_secret
        self._clock = clock

    @property
    def root(self) -> Path:
        return self._root

    # --- paths (call from worker threads: resolve() touches the filesystem) ---

    def _contained(self, path: Path, base: Path, key: str) -> Path:
        # Key validation already rules out traversal; this also catches symlinks placed
        # inside the root that point outside it.
        resolved = path.resolve()
        if not resolved.is_relative_to(base):
            raise InvalidStorageKey(key, "resolves outside the storage root")
        return resolved

    def _data_path(self, key: str) -> Path:
        return self._contained(self._root / key, self._root, key)

    def _meta_path(self, key: str) -> Path:
        return self._contained(self._meta_root / key, self._meta_root, key)

    def _prune_empty_dirs(self, directory: Path, stop: Path) -> None:
        while directory != stop and directory.is_relative_to(stop):
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (another object, or a write in progress) or gone
            directory = directory.parent

    # --- synchronous bodies, run via asyncio.to_thread ---

    def _new_writer(self, key: str) -> _AtomicWriter:
        return _AtomicWriter(self._data_path(key), self._meta_path(key))

    def _put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        writer = self._new_writer(key)
        try:
            writer.copy_from(path)
        except BaseException:
            writer.discard()
            raise
        return writer.commit(key, content_type)

    def _put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        writer = self._new_writer(key)
        try:
            writer.write(data)
        except BaseException:
            writer.discard()
            raise
        return writer.commit(key, content_type)

    def _open_for_read(self, key: str) -> BinaryIO:
        try:
            return self._data_path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageObjectNotFound(key) from None

    def _download_to(self, key: str, path: Path) -> None:
        with self._open_for_read(key) as src:
            temp, dst = _create_temp_file(path.parent)
            try:
                with dst:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
                os.replace(temp, path)
            except BaseException:
                _unlink_quietly(temp)
                raise

    def _head(self, key: str) -> StoredObject | None:
        try:
            st = self._data_path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # a "directory" of other keys, not an object
        content_type, sha256 = _guess_content_type(key), None
        try:
            meta = json.loads(self._meta_path(key).read_bytes())
        except (OSError, ValueError):
            meta = None
        # Metadata from an interrupted or concurrent write may not match the data.
        if isinstance(meta, dict) and meta.get("size") == st.st_size:
            content_type = str(meta.get("content_type") or content_type)
            sha256 = meta.get("sha256") if isinstance(meta.get("sha256"), str) else None
        return StoredObject(key=key, size=st.st_size, content_type=content_type, sha256=sha256)

    def _delete(self, key: str) -> bool:
        data_path, meta_path = self._data_path(key), self._meta_path(key)
        existed = False
        if not data_path.is_dir():  # a "directory" of other keys is not an object
            try:
                data_path.unlink()
                existed = True
            except (FileNotFoundError, NotADirectoryError):
                pass
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            meta_path.unlink()
        self._prune_empty_dirs(data_path.parent, self._root)
        self._prune_empty_dirs(meta_path.parent, self._meta_root)
        return existed

    def _delete_prefix(self, prefix: str) -> int:
        base_rel = prefix.rpartition("/")[0]
        deleted = self._unlink_matching(self._root, base_rel, prefix)
        # The metadata of the objects just deleted, and any orphaned by a crash.
        self._unlink_matching(self._meta_root, base_rel, prefix)
        return deleted

    def _unlink_matching(self, tree: Path, base_rel: str, prefix: str) -> int:
        """Unlink the files under ``tree`` whose key starts with ``prefix``; count them."""
        base = self._contained(tree / base_rel, tree, prefix)
        if not base.is_dir():
            return 0
        deleted = 0
        visited: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(base):
            directory = Path(dirpath)
            visited.append(directory)
            # Skips the metadata tree when walking the data root.
            dirnames[:] = [name for name in dirnames if _is_object_name(name)]
            for name in filenames:
                path = directory / name
                if not _is_object_name(name):
                    continue
                if not path.relative_to(tree).as_posix().startswith(prefix):
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue  # deleted concurrently: not ours to count
                deleted += 1
        # Deepest first, so a directory emptied by removing its children goes too.
        for directory in reversed(visited):
            if directory != tree:
                with contextlib.suppress(OSError):
                    directory.rmdir()
        self._prune_empty_dirs(base.parent, tree)
        return deleted

    # --- ObjectStorage ---

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        validate_key(key)
        return await asyncio.to_thread(self._put_file, key, path, content_type)

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        part_size: int | None = None,
    ) -> StoredObject:
        # part_size: one file, written as the chunks come, has no parts.
        validate_key(key)
        writer = await asyncio.to_thread(self._new_writer, key)
        try:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(writer.write, chunk)
        except BaseException:
            # Also on cancellation: the worker thread finishes the cleanup even if this
            # await is interrupted again.
            await asyncio.to_thread(writer.discard)
            raise
        return await asyncio.to_thread(writer.commit, key, content_type)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        validate_key(key)
        return await asyncio.to_thread(self._put_bytes, key, data, content_type)

    async def iter_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        validate_key(key)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        file = await asyncio.to_thread(self._open_for_read, key)
        try:
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(file.close)

    async def download_to(self, key: str, path: Path) -> None:
        validate_key(key)
        await asyncio.to_thread(self._download_to, key, path)

    async def head(self, key: str) -> StoredObject | None:
        validate_key(key)
        return await asyncio.to_thread(self._head, key)

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> bool:
        validate_key(key)
        return await asyncio.to_thread(self._delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        return await asyncio.to_thread(self._delete_prefix, prefix)

    async def download_url(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        check_expires_in(expires_in)
        if filename is not None:
            validate_download_filename(filename)
        expires = int(self._clock()) + expires_in
        query = {
            "expires": str(expires),
            "signature": sign_file_url(self._secret, key, expires, filename),
        }
        if filename is not None:
            query["filename"] = filename
        return f"{self._public_base_url}/v1/files/{key}?{urlencode(query, quote_via=quote)}"

    # --- used by the file-serving route ---

    def verify_url(self, key: str, expires: int, signature: str, filename: str | None) -> bool:
        """Whether a ``/v1/files/{key}`` request's query authorises the download now."""
        return verify_signed_file_url(
            self._secret, key, expires, signature, filename, now=self._clock()
        )

    def remaining_seconds(self, expires: int) -> int:
        """Seconds until ``expires`` (a Unix time), never negative."""
        return max(0, int(expires - self._clock()))

    async def local_path(self, key: str) -> Path:
        """The file holding ``key``'s content (it may not exist), checked to be in the root."""
        validate_key(key)
        return await asyncio.to_thread(self._data_path, key)
