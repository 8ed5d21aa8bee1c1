"""Object storage: the ``ObjectStorage`` port and its local and S3 adapters."""

from avatar_api.storage.base import (
    DEFAULT_CHUNK_SIZE,
    MAX_KEY_LENGTH,
    ObjectStorage,
    StoredObject,
    validate_key,
    validate_prefix,
)
from avatar_api.storage.errors import (
    FileUrlInvalid,
    InvalidStorageKey,
    StorageObjectNotFound,
    StorageOperationFailed,
    StoredFileNotFound,
)
from avatar_api.storage.local import LocalStorage, sign_file_url, verify_signed_file_url
from avatar_api.storage.s3 import S3Storage

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_KEY_LENGTH",
    "FileUrlInvalid",
    "InvalidStorageKey",
    "LocalStorage",
    "ObjectStorage",
    "S3Storage",
    "StorageObjectNotFound",
    "StorageOperationFailed",
    "StoredFileNotFound",
    "StoredObject",
    "sign_file_url",
    "validate_key",
    "validate_prefix",
    "verify_signed_file_url",
]
