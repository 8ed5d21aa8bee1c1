"""Streaming multipart reception: files go straight to temp files under hard caps.

Starlette's ``request.form()`` has no per-file size cap, so the body is parsed here with
python-multipart's low-level parser. Memory stays bounded by one network chunk; disk writes
run in a thread; every temp file is removed by the caller's TemporaryDirectory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from avatar_api.errors import AppError, PayloadTooLarge, ServiceUnavailable
from avatar_api.observability.metrics import UPLOADS_BUSY

FILES_FIELD = "files"
MAX_OTHER_PARTS = 8
MAX_FILENAME_CHARS = 120
# Part headers may carry long (hostile) filenames; those are truncated, not fatal, but a
# header block past this size is refused as malformed.
MAX_PART_HEADER_BYTES = 16 * 1024


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"
    title = "Upload too large"


class TooManyFiles(PayloadTooLarge):
    code = "too_many_files"
    title = "Too many files in one upload"


class InvalidMultipart(AppError):
    status_code = 400
    code = "invalid_multipart"
    title = "Malformed multipart upload"


class UnsupportedUploadMediaType(AppError):
    status_code = 415
    code = "unsupported_upload_media_type"
    title = "Upload must be multipart/form-data"


class NoFiles(AppError):
    status_code = 422
    code = "no_files"
    title = "No files in the upload"


class UploadsBusy(ServiceUnavailable):
    code = "uploads_busy"
    title = "Too many uploads in progress"


# What one normalised photo may take on temp disk (a 2048 px JPEG is 0.5-3 MB).
OUTPUT_BYTES_PER_PHOTO = 4 * 1024 * 1024


class DiskBudget:
    """The temp-disk bytes that uploads in this process may use at once.

    Bytes are charged as they are written, not reserved up front: a client that opens an
    upload and sends nothing holds nothing. An upload whose Content-Length cannot fit is
    refused before a byte is read; one that outgrows the room mid-way is cut off there.
    One event loop does all the accounting, so no lock is needed.
    """

    RETRY_AFTER_SECONDS = 5

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def _refuse(self) -> UploadsBusy:
        UPLOADS_BUSY.inc()
        return UploadsBusy(
            "The service is receiving as many uploads as its temporary disk allows; "
            f"retry in {self.RETRY_AFTER_SECONDS} s.",
            headers={"Retry-After": str(self.RETRY_AFTER_SECONDS)},
        )

    def check_room(self, content_length: str | None, *, max_request_bytes: int) -> None:
        """Refuse at once an upload whose declared size does not fit in what is free.

        A size over the per-request cap is left to :func:`receive_files` (a 413: it will
        never fit, and retrying would not help).
        """
        if content_length is None or not content_length.isdigit():
            return
        size = int(content_length)
        if size <= max_request_bytes and size > self.limit_bytes - self.used_bytes:
            raise self._refuse()

    @contextlib.contextmanager
    def account(self) -> Iterator[Callable[[int], None]]:
        """A ``charge(size)`` function for one upload; all it charged is freed at the end."""
        charged = 0

        def charge(size: int) -> None:
            nonlocal charged
            if self.used_bytes + size > self.limit_bytes:
                raise self._refuse()
            self.used_bytes += size
            charged += size

        try:
            yield charge
        finally:
            self.used_bytes -= charged


@dataclass
class ReceivedFile:
    filename: str
    path: Path
    size: int = 0


@dataclass
class UploadLimits:
    max_file_bytes: int
    max_request_bytes: int
    max_files: int


def sanitise_filename(raw: str | None, index: int) -> str:
    """A display name safe to store and echo back; never used as a path."""
    name = unicodedata.normalize("NFKC", raw or "")
    # Keep the last path component only, whichever separator the client used.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "\x00\r\n\t")
    name = name.strip(" .")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:10] if dot else ""
        name = (stem or name)[: MAX_FILENAME_CHARS - len(ext) - 1] + ("." + ext if ext else "")
    return name or f"photo-{index + 1}"


@dataclass
class _State:
    limits: UploadLimits
    tmp_dir: Path
    files: list[ReceivedFile] = field(default_factory=list)
    other_parts: int = 0
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    current: ReceivedFile | None = None
    handle: BinaryIO | None = None
    handles: list[BinaryIO] = field(default_factory=list)
    pending: list[tuple[BinaryIO, bytes]] = field(default_factory=list)
    error: AppError | None = None
    ended: bool = False


def _callbacks(state: _State) -> dict[str, object]:
    def fail(error: AppError) -> None:
        if state.error is None:
            state.error = error

    def on_part_begin() -> None:
        state.headers = {}
        state.current = None
        state.handle = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        disposition, params = parse_options_header(state.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        if disposition != b"form-data" or name != FILES_FIELD or raw_filename is None:
            state.other_parts += 1
            if state.other_parts > MAX_OTHER_PARTS:
                fail(TooManyFiles(f"Only '{FILES_FIELD}' file parts are expected."))
            return
        if len(state.files) >= state.limits.max_files:
            fail(TooManyFiles(f"Send at most {state.limits.max_files} files per request."))
            return
        index = len(state.files)
        received = ReceivedFile(
            filename=sanitise_filename(raw_filename.decode("utf-8", "replace"), index),
            path=state.tmp_dir / f"upload-{index}",
        )
        state.files.append(received)
        state.current = received
        # Opening an empty file is a metadata-only syscall; the writes go to a thread.
        state.handle = received.path.open("wb")
        state.handles.append(state.handle)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.current is None or state.handle is None or state.error is not None:
            return
        state.current.size += end - start
        if state.current.size > state.limits.max_file_bytes:
            fail(
                UploadTooLarge(
                    f"'{state.current.filename}' is larger than the "
                    f"{state.limits.max_file_bytes // (1024 * 1024)} MiB per-file limit."
                )
            )
            return
        state.pending.append((state.handle, data[start:end]))

    def on_end() -> None:
        state.ended = True

    return {
        "on_end": on_end,
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
    }


def _flush(pending: list[tuple[BinaryIO, bytes]]) -> None:
    for handle, chunk in pending:
        handle.write(chunk)


async def _write_pending(state: _State) -> None:
    if state.pending:
        pending, state.pending = state.pending, []
        await asyncio.to_thread(_flush, pending)


async def receive_files(
    *,
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    tmp_dir: Path,
    limits: UploadLimits,
    charge: Callable[[int], None] | None = None,
) -> list[ReceivedFile]:
    """Read a multipart body into temp files under ``tmp_dir``, stopping at the first cap.

    ``charge`` is told every chunk's size before it is written (a temp-disk budget).
    """
    media, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise UnsupportedUploadMediaType("Send the photos as multipart/form-data, field 'files'.")
    if (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > limits.max_request_bytes
    ):
        raise UploadTooLarge(
            f"The upload is {int(content_length)} bytes; the limit per request is "
            f"{limits.max_request_bytes} bytes."
        )
    state = _State(limits=limits, tmp_dir=tmp_dir)
    parser = MultipartParser(
        boundary,
        _callbacks(state),  # type: ignore[arg-type]
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > limits.max_request_bytes:
                raise UploadTooLarge(
                    f"The upload exceeds the {limits.max_request_bytes} bytes limit per request."
                )
            if charge is not None:
                charge(len(chunk))
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart raises several types on bad input
                raise InvalidMultipart("The multipart body could not be parsed.") from exc
            if state.error is not None:
                raise state.error
            await _write_pending(state)
        try:
            parser.finalize()
        except Exception as exc:
            raise InvalidMultipart("The multipart body ended early.") from exc
        if state.error is not None:
            raise state.error
        # finalize() accepts a body cut short; only the closing boundary proves it complete.
        if not state.ended:
            raise InvalidMultipart("The multipart body ended before its closing boundary.")
        await _write_pending(state)
    finally:
        # Writes for a part may still be pending when the next part starts, so handles
        # are closed together at the end, on success and on every early exit.
        for handle in state.handles:
            handle.close()
    if not state.files:
        raise NoFiles(f"Attach one or more photos in the '{FILES_FIELD}' field.")
    return state.files
