"""``GET /v1/files/{key}``: downloads behind the local adapter's signed, expiring URLs.

S3 deployments hand out presigned URLs of the bucket instead, so there the route
answers 404 for everything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from avatar_api.errors import problem_responses
from avatar_api.storage.base import content_disposition
from avatar_api.storage.dependencies import StorageDep
from avatar_api.storage.errors import FileUrlInvalid, StoredFileNotFound
from avatar_api.storage.local import LocalStorage

router = APIRouter(tags=["files"])

# A Unix time fits in 11 digits until the year 5138; longer input is garbage.
_MAX_EXPIRES_DIGITS = 12

# Stored files are caller-supplied bytes served from the API's own origin: a file
# claiming text/html must not run script there.
_HARDENING_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def _parse_expires(expires: str | None) -> int | None:
    if expires is None or not expires.isascii() or not expires.isdigit():
        return None
    if len(expires) > _MAX_EXPIRES_DIGITS:
        return None
    return int(expires)


@router.get(
    "/v1/files/{key:path}",
    operation_id="download_file",
    response_class=FileResponse,
    responses={
        200: {"description": "The file's content.", "content": {"application/octet-stream": {}}},
        **problem_responses(FileUrlInvalid, StoredFileNotFound),
    },
)
async def download_file(
    key: str,
    storage: StorageDep,
    expires: Annotated[str | None, Query(description="Unix time the URL expires at.")] = None,
    signature: Annotated[str | None, Query(description="HMAC-SHA256 of the URL, hex.")] = None,
    filename: Annotated[str | None, Query(description="Suggested download name.")] = None,
) -> FileResponse:
    """Download a stored file through a signed, expiring URL issued by this API."""
    if not isinstance(storage, LocalStorage):
        raise StoredFileNotFound()
    expires_at = _parse_expires(expires)
    if (
        expires_at is None
        or signature is None
        or not storage.verify_url(key, expires_at, signature, filename)
    ):
        raise FileUrlInvalid()
    stored = await storage.head(key)
    if stored is None:
        raise StoredFileNotFound()
    headers = {
        # Never cached past the URL's own expiry; private because the URL is a credential.
        "Cache-Control": f"private, max-age={storage.remaining_seconds(expires_at)}",
        **_HARDENING_HEADERS,
    }
    if filename is not None:
        headers["Content-Disposition"] = content_disposition(filename)
    return FileResponse(
        await storage.local_path(key), media_type=stored.content_type, headers=headers
    )
