"""Errors raised by the storage port and its adapters.

``InvalidStorageKey`` and ``StorageObjectNotFound`` are programming-level errors that
services translate into their own domain errors (a missing photo file is the service's
business, not the storage's). ``FileUrlInvalid`` and ``StoredFileNotFound`` are answered
directly by the file-serving route.
"""

from __future__ import annotations

from avatar_api.errors import AppError


class InvalidStorageKey(ValueError):
    """The key is not a safe object key (see :func:`avatar_api.storage.base.validate_key`)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid storage key {key[:80]!r}: {reason}")
        self.key = key
        self.reason = reason


class StorageObjectNotFound(KeyError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument; a plain message reads better in logs.
        return f"no stored object under key {self.key!r}"


class StorageOperationFailed(RuntimeError):
    """The backend refused part of an operation (e.g. some keys of a batch delete)."""


class FileUrlInvalid(AppError):
    status_code = 403
    code = "file_url_invalid"
    title = "File URL is invalid or has expired"


class StoredFileNotFound(AppError):
    status_code = 404
    code = "file_not_found"
    title = "File not found"
