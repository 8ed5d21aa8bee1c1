"""S3 adapter (AWS S3 and compatible servers: MinIO, SeaweedFS, Cloudflare R2).

boto3 is synchronous, so every call on the client goes through ``asyncio.to_thread``:
the event loop never waits on the network. One client is created per adapter and shared
by the worker threads (boto3 clients are thread-safe; sessions are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from avatar_api.storage.base import (
    DEFAULT_CHUNK_SIZE,
    MiB,
    StoredObject,
    check_expires_in,
    content_disposition,
    validate_download_filename,
    validate_key,
    validate_prefix,
)
from avatar_api.storage.errors import StorageObjectNotFound, StorageOperationFailed

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        ListObjectsV2OutputTypeDef,
    )

logger = logging.getLogger("avatar_api.storage.s3")

S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PARTS = 10_000
MIN_STREAM_PART_SIZE = 8 * MiB
DELETE_BATCH_SIZE = 1000  # the most DeleteObjects accepts in one request
_FALLBACK_CONTENT_TYPE = "application/octet-stream"


def _is_not_found(exc: ClientError) -> bool:
    # HEAD answers carry no body, so botocore reports a bare "404" instead of NoSuchKey.
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"} or status == 404


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


async def _fixed_size_parts(
    chunks: AsyncIterable[bytes], size: int
) -> AsyncGenerator[tuple[bytes, bool], None]:
    """Re-cut ``chunks`` into parts of exactly ``size`` bytes, the last one 1 to ``size``.

    Each part comes with whether more follow. A part is handed out as soon as a byte
    beyond it has arrived, so the caller can upload it while the stream goes on and
    still recognise the last part. Equal part sizes are not just tidy: R2 rejects a
    multipart upload whose non-final parts differ in size. Memory stays below ``size``
    plus one incoming chunk, and each byte is copied once (chunks are joined, not
    appended to a growing buffer).
    """
    pending: list[bytes | memoryview] = []
    buffered = 0
    async for chunk in chunks:
        pending.append(chunk)
        buffered += len(chunk)
        while buffered > size:
            # Only the newest chunk straddles the boundary: before it came, at most
            # ``size`` bytes were pending.
            last = memoryview(pending.pop())
            keep = len(last) - (buffered - size)
            part = b"".join([*pending, last[:keep]])
            pending = [last[keep:]]
            buffered -= size
            yield part, True
            del part
    if buffered:
        yield b"".join(pending), False


async def _settle(
    uploads: set[asyncio.Task[CompletedPartTypeDef]], *, running: int
) -> list[CompletedPartTypeDef]:
    """Wait until at most ``running`` of ``uploads`` are unfinished; return the finished.

    Finished tasks leave the set. The first failed upload raises here, and the tasks not
    yet looked at stay in the set for the caller's clean-up to wait for.
    """
    finished: list[CompletedPartTypeDef] = []
    while True:
        for task in [t for t in uploads if t.done()]:
            finished.append(task.result())
            uploads.discard(task)
        if len(uploads) <= running:
            return finished
        await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)


class _Body:
    """A GET response body that closes itself once its last byte is read."""

    def __init__(self, body: StreamingBody, length: int | None) -> None:
        self._body = body
        self._remaining = length
        self.closed = False

    def read(self, size: int) -> bytes:
        if self._remaining is not None:
            size = min(size, self._remaining)
        # StreamingBody raises IncompleteReadError if the stream ends early.
        chunk = self._body.read(size) if size > 0 else b""
        if self._remaining is not None:
            self._remaining -= len(chunk)
        if not chunk or self._remaining == 0:
            self.close()
        return chunk

    def close(self) -> None:
        self.closed = True
        self._body.close()


class S3Storage:
    """:class:`~avatar_api.storage.base.ObjectStorage` on an S3 bucket.

    ``endpoint_url`` is where this process reaches the S3 API (``None`` for AWS);
    ``public_endpoint_url``, when set, is the base that presigned download URLs use,
    for deployments where the API talks to the store over an internal address that
    callers cannot reach. ``path_style`` selects ``endpoint/bucket/key`` addressing,
    which MinIO and SeaweedFS need. Files larger than ``multipart_threshold`` are
    uploaded in ``multipart_chunk_size`` parts by boto3's managed transfer; streams use
    parts of at least 8 MiB unless the caller asks for smaller ones. Files go up
    ``max_concurrency`` parts at a time, streams ``stream_concurrency`` parts (each one
    held in memory until it is stored).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        path_style: bool = False,
        public_endpoint_url: str | None = None,
        multipart_threshold: int = 16 * MiB,
        multipart_chunk_size: int = 8 * MiB,
        max_concurrency: int = 4,
        stream_concurrency: int = 2,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        if multipart_chunk_size < S3_MIN_PART_SIZE:
            raise ValueError("multipart_chunk_size must be at least 5 MiB (the S3 minimum)")
        if multipart_threshold < multipart_chunk_size:
            raise ValueError("multipart_threshold must be at least multipart_chunk_size")
        if max_concurrency < 1 or stream_concurrency < 1:
            raise ValueError("max_concurrency and stream_concurrency must be at least 1")
        self._bucket = bucket
        self._region = region
        self._stream_part_size = max(multipart_chunk_size, MIN_STREAM_PART_SIZE)
        self._stream_concurrency = stream_concurrency
        # Clean-ups of failed multipart uploads run as tasks shielded from a second
        # cancellation; the loop holds tasks only weakly, so they are kept here.
        self._cleanups: set[asyncio.Task[None]] = set()
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunk_size,
            max_concurrency=max_concurrency,
        )
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "virtual"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Transfers run max_concurrency requests at once, next to other callers.
            max_pool_connections=max(10, 2 * max_concurrency, 2 * stream_concurrency),
            # botocore >= 1.36 adds CRC checksums to every upload by default, which
            # several S3-compatible servers reject; send them only where S3 requires.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        # Presigning is pure computation over the endpoint, so a second client is the
        # way to sign for an address other than the one we connect to.
        self._presign_client: S3Client = (
            session.client(
                "s3",
                endpoint_url=public_endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )
            if public_endpoint_url
            else self._client
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (development, tests, compose stacks)."""
        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        try:
            if self._region == "us-east-1":
                # us-east-1 refuses an explicit LocationConstraint naming itself.
                await asyncio.to_thread(self._client.create_bucket, Bucket=self._bucket)
            else:
                location = cast("BucketLocationConstraintType", self._region)
                await asyncio.to_thread(
                    self._client.create_bucket,
                    Bucket=self._bucket,
                    CreateBucketConfiguration={"LocationConstraint": location},
                )
        except ClientError as exc:
            # Another process (a second API replica) won the race.
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    async def close(self) -> None:
        """Release the clients' connection pools."""
        await asyncio.to_thread(self._client.close)
        if self._presign_client is not self._client:
            await asyncio.to_thread(self._presign_client.close)

    # --- ObjectStorage ---

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        validate_key(key)
        await asyncio.to_thread(
            self._client.upload_file,
            str(path),
            self._bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=self._transfer_config,
        )
        stored = await self.head(key)
        if stored is None:
            raise StorageOperationFailed(f"object {key!r} missing right after its upload")
        return stored

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        part_size: int | None = None,
    ) -> StoredObject:
        validate_key(key)
        if part_size is None:
            part_size = self._stream_part_size
        elif part_size < S3_MIN_PART_SIZE:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum)")
        parts = _fixed_size_parts(chunks, part_size)
        async with contextlib.aclosing(parts):
            first = await anext(parts, None)
            if first is None or not first[1]:
                # Fits in one part: a single PUT costs one request instead of three.
                body = first[0] if first is not None else b""
                del first
                return await self.put_bytes(key, body, content_type=content_type)
            # A list the callee empties, so this frame holds no reference to the part.
            queued = [first[0]]
            del first
            return await self._put_parts(key, queued, parts, content_type)

    async def _put_parts(
        self,
        key: str,
        queued: list[bytes],
        parts: AsyncIterator[tuple[bytes, bool]],
        content_type: str,
    ) -> StoredObject:
        """Multipart upload of the ``queued`` part, then of ``parts``, several at once.

        A part goes up as soon as it is full while the stream goes on, so producing the
        stream and uploading it overlap. At most ``stream_concurrency`` parts are in flight:
        memory stays below that many parts plus the one being filled.
        """
        created = await asyncio.to_thread(
            self._client.create_multipart_upload,
            Bucket=self._bucket,
            Key=key,
            ContentType=content_type,
        )
        upload_id = created["UploadId"]
        uploads: set[asyncio.Task[CompletedPartTypeDef]] = set()
        try:
            completed: list[CompletedPartTypeDef] = []
            size = 0
            number = 0
            while True:
                # A free slot first, then the next part: no part waits in memory for its
                # turn. Also where a failed part stops the stream before more is produced.
                completed += await _settle(uploads, running=self._stream_concurrency - 1)
                part = queued.pop() if queued else await self._next_part(parts)
                if part is None:
                    break
                number += 1
                if number > S3_MAX_PARTS:
                    raise StorageOperationFailed(f"stream for {key!r} exceeds {S3_MAX_PARTS} parts")
                uploads.add(asyncio.create_task(self._upload_part(key, upload_id, number, part)))
                size += len(part)
                del part  # the task holds the only reference; it goes when the part is up
            completed += await _settle(uploads, running=0)
            completed.sort(key=lambda done_part: done_part["PartNumber"])
            done = await asyncio.to_thread(
                self._client.complete_multipart_upload,
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
            )
        except BaseException:
            await self._abandon_multipart(key, upload_id, uploads)
            raise
        return StoredObject(
            key=key, size=size, content_type=content_type, etag=_strip_etag(done.get("ETag"))
        )

    @staticmethod
    async def _next_part(parts: AsyncIterator[tuple[bytes, bool]]) -> bytes | None:
        following = await anext(parts, None)
        return None if following is None else following[0]

    async def _abandon_multipart(
        self, key: str, upload_id: str, uploads: set[asyncio.Task[CompletedPartTypeDef]]
    ) -> None:
        """Abort the upload once its parts in flight are done (also on cancellation).

        A part that lands after the abort would be stored (and billed) with no upload to
        belong to, so the abort waits for them. The clean-up is its own task, shielded:
        a second cancellation of the caller does not stop it half-way.
        """

        async def clean_up() -> None:
            # Cancelling the tasks would not stop their threads, only stop us waiting.
            await asyncio.gather(*uploads, return_exceptions=True)
            await self._abort_multipart(key, upload_id)

        task = asyncio.create_task(clean_up())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes
    ) -> CompletedPartTypeDef:
        response = await asyncio.to_thread(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            # A file, not bytes: botocore prepends the headers to a bytes body, a copy of
            # the whole part in the worker thread. BytesIO shares the buffer instead.
            Body=io.BytesIO(body),
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await asyncio.to_thread(
                self._client.abort_multipart_upload,
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
            )
        except (ClientError, BotoCoreError):
            # Never mask the original error; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) is the backstop for these leftovers.
            logger.warning(
                "storage.multipart_abort_failed",
                extra={"bucket": self._bucket, "key": key, "upload_id": upload_id},
                exc_info=True,
            )

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        validate_key(key)
        response = await asyncio.to_thread(
            self._client.put_object,
            Bucket=self._bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )
        return StoredObject(
            key=key,
            size=len(data),
            content_type=content_type,
            etag=_strip_etag(response.get("ETag")),
        )

    async def iter_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        validate_key(key)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        # The GET rides in the thread hop of the first chunk, and the close in that of
        # the last: an object of one chunk (a photo) costs one hop, not four.
        body, chunk = await asyncio.to_thread(self._open_body, key, chunk_size)
        try:
            while chunk:
                yield chunk
                if body.closed:
                    break
                chunk = await asyncio.to_thread(body.read, chunk_size)
        finally:
            if not body.closed:
                await asyncio.to_thread(body.close)

    def _open_body(self, key: str, chunk_size: int) -> tuple[_Body, bytes]:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise StorageObjectNotFound(key) from None
            raise
        body = _Body(response["Body"], response.get("ContentLength"))
        try:
            return body, body.read(chunk_size)
        except BaseException:
            body.close()
            raise

    async def download_to(self, key: str, path: Path) -> None:
        validate_key(key)
        try:
            # The managed transfer writes to a temporary name and renames it into
            # place, so ``path`` is replaced atomically (and untouched on a 404).
            await asyncio.to_thread(
                self._client.download_file,
                self._bucket,
                key,
                str(path),
                Config=self._transfer_config,
            )
        except ClientError as exc:
            if _is_not_found(exc):
                raise StorageObjectNotFound(key) from None
            raise

    async def head(self, key: str) -> StoredObject | None:
        validate_key(key)
        try:
            response = await asyncio.to_thread(
                self._client.head_object, Bucket=self._bucket, Key=key
            )
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        return StoredObject(
            key=key,
            size=response["ContentLength"],
            content_type=response.get("ContentType") or _FALLBACK_CONTENT_TYPE,
            etag=_strip_etag(response.get("ETag")),
        )

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> bool:
        # DeleteObject answers 204 whether or not the key existed, so the answer to
        # "was something deleted" needs a HEAD first (racy only against concurrent
        # deletes of the same key, where either answer is true enough).
        existed = await self.exists(key)
        await asyncio.to_thread(self._client.delete_object, Bucket=self._bucket, Key=key)
        return existed

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        deleted = 0
        token: str | None = None
        while True:
            page = await asyncio.to_thread(self._list_page, prefix, token)
            keys = [obj["Key"] for obj in page.get("Contents", []) if "Key" in obj]
            for start in range(0, len(keys), DELETE_BATCH_SIZE):
                deleted += await self._delete_batch(keys[start : start + DELETE_BATCH_SIZE])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return deleted

    def _list_page(self, prefix: str, token: str | None) -> ListObjectsV2OutputTypeDef:
        if token is None:
            return self._client.list_objects_v2(
                Bucket=self._bucket, Prefix=prefix, MaxKeys=DELETE_BATCH_SIZE
            )
        return self._client.list_objects_v2(
            Bucket=self._bucket, Prefix=prefix, MaxKeys=DELETE_BATCH_SIZE, ContinuationToken=token
        )

    async def _delete_batch(self, keys: list[str]) -> int:
        response = await asyncio.to_thread(
            self._client.delete_objects,
            Bucket=self._bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageOperationFailed(
                f"could not delete {len(errors)} of {len(keys)} objects; first: "
                f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    async def download_url(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        check_expires_in(expires_in)
        params: dict[str, str] = {"Bucket": self._bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(
                validate_download_filename(filename)
            )
        # Signing is local computation, but refreshing credentials (instance metadata,
        # SSO) may go to the network: keep it off the event loop too.
        return await asyncio.to_thread(
            self._presign_client.generate_presigned_url,
            "get_object",
            Params=params,
            ExpiresIn=expires_in,
        )
