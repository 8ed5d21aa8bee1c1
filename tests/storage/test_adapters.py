"""One behavioural suite for every ObjectStorage adapter, plus adapter-specific checks.

The suite runs against LocalStorage on a temporary directory and against S3Storage on a
real SeaweedFS server (see tests/s3server.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from avatar_api.errors import install_error_handlers
from avatar_api.storage import (
    InvalidStorageKey,
    LocalStorage,
    ObjectStorage,
    S3Storage,
    StorageObjectNotFound,
    sign_file_url,
    validate_key,
    validate_prefix,
    verify_signed_file_url,
)
from avatar_api.storage.base import MiB
from avatar_api.storage.router import router as files_router
from tests.s3server import S3Server, open_uploads

SECRET = b"test-signing-secret"
PUBLIC_BASE_URL = "http://api.test"
START_TIME = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """An adapter plus the adapter-specific means to observe and steer it."""

    storage: ObjectStorage
    advance_time: Callable[[float], Awaitable[None]]
    leftovers: Callable[[], Awaitable[list[str]]]
    """Temporary files or unfinished multipart uploads left behind by writes."""


def make_local(root: Path, clock: FakeClock) -> LocalStorage:
    return LocalStorage(root, public_base_url=PUBLIC_BASE_URL, signing_secret=SECRET, clock=clock)


def _local_harness(root: Path) -> Harness:
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    def temp_files() -> list[str]:
        return [str(p) for p in root.rglob("*") if p.name.startswith(".~tmp-")]

    async def leftovers() -> list[str]:
        return await asyncio.to_thread(temp_files)

    return Harness(make_local(root, clock), advance, leftovers)


def _s3_harness(storage: S3Storage, server: S3Server) -> Harness:
    async def advance(seconds: float) -> None:
        # The server checks expiry against its own wall clock: only real time will do.
        await asyncio.sleep(seconds)

    async def leftovers() -> list[str]:
        return await asyncio.to_thread(open_uploads, server, storage.bucket)

    return Harness(storage, advance, leftovers)


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    # Synchronous on purpose: getfixturevalue() cannot set up an async fixture from
    # inside a running event loop. Local-only runs (-k local) never start SeaweedFS.
    if request.param == "local":
        return _local_harness(tmp_path / "storage")
    storage: S3Storage = request.getfixturevalue("s3_storage")
    server: S3Server = request.getfixturevalue("s3_server")
    return _s3_harness(storage, server)


@pytest.fixture
def storage(harness: Harness) -> ObjectStorage:
    return harness.storage


def files_app(storage: object) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(files_router)
    app.state.storage = storage
    return app


@pytest_asyncio.fixture
async def http(storage: ObjectStorage) -> AsyncIterator[httpx.AsyncClient]:
    """A client that can fetch the adapter's download URLs."""
    if isinstance(storage, LocalStorage):
        # The local adapter's URLs point at the API itself: serve them in-process.
        transport = httpx.ASGITransport(app=files_app(storage))
        async with httpx.AsyncClient(transport=transport) as client:
            yield client
    else:
        async with httpx.AsyncClient() as client:
            yield client


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def stream(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


def tamper(url: str, param: str, value: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query[param] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def flip_last_char(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


# --- the shared suite ---


async def test_put_bytes_round_trip(storage: ObjectStorage) -> None:
    data = b"hello, storage\n" * 100

    stored = await storage.put_bytes("avatars/1/photo.txt", data, content_type="text/plain")

    assert (stored.key, stored.size, stored.content_type) == (
        "avatars/1/photo.txt",
        len(data),
        "text/plain",
    )
    if isinstance(storage, LocalStorage):
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
    else:
        assert stored.etag == hashlib.md5(data).hexdigest()  # noqa: S324 (S3's ETag)
    head = await storage.head("avatars/1/photo.txt")
    assert head is not None
    assert (head.size, head.content_type) == (len(data), "text/plain")
    chunks = await collect(storage.iter_chunks("avatars/1/photo.txt", chunk_size=64))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) == 64


async def test_put_replaces_content_and_type(storage: ObjectStorage) -> None:
    await storage.put_bytes("k/obj", b"first version", content_type="text/plain")

    await storage.put_bytes("k/obj", b"2nd", content_type="application/json")

    assert b"".join(await collect(storage.iter_chunks("k/obj"))) == b"2nd"
    head = await storage.head("k/obj")
    assert head is not None
    assert (head.size, head.content_type) == (3, "application/json")


async def test_put_file_and_download_to(storage: ObjectStorage, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 123)
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    stored = await storage.put_file("archives/a.zip", source, content_type="application/zip")

    assert (stored.size, stored.content_type) == (len(data), "application/zip")
    if isinstance(storage, S3Storage):
        # Above the 8 MiB threshold the managed transfer went multipart: 2 parts.
        assert stored.etag is not None
        assert stored.etag.endswith("-2")
    target = tmp_path / "out" / "copy.zip"
    target.parent.mkdir()
    target.write_bytes(b"stale content to be replaced")
    await storage.download_to("archives/a.zip", target)
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.zip"]


async def test_put_stream_large_is_streamed_in_parts(storage: ObjectStorage) -> None:
    data = os.urandom(20 * MiB)

    # Odd-sized incoming chunks, so the adapter has to re-cut them into parts.
    stored = await storage.put_stream(
        "big/stream.bin", stream(data, 1_000_003), content_type="application/octet-stream"
    )

    assert stored.size == len(data)
    if isinstance(storage, S3Storage):
        # A multipart upload's ETag is "<md5 of part md5s>-<part count>": 8 + 8 + 4 MiB.
        assert stored.etag is not None
        assert stored.etag.endswith("-3")
        head = await storage.head("big/stream.bin")
        assert head is not None
        assert head.etag == stored.etag
    else:
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    async for chunk in storage.iter_chunks("big/stream.bin"):
        assert len(chunk) <= MiB
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 64, 65, 128, 200])
async def test_iter_chunks_at_chunk_boundaries(storage: ObjectStorage, size: int) -> None:
    data = os.urandom(size)
    await storage.put_bytes("c/obj", data, content_type="application/octet-stream")

    chunks = await collect(storage.iter_chunks("c/obj", chunk_size=64))

    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == [64] * (size // 64) + ([size % 64] if size % 64 else [])


async def test_put_stream_small_and_empty(storage: ObjectStorage) -> None:
    small = await storage.put_stream("s/small", stream(b"abc" * 1000, 7), content_type="text/csv")
    empty = await storage.put_stream("s/empty", stream(b"", 1), content_type="text/plain")

    assert (small.size, empty.size) == (3000, 0)
    assert b"".join(await collect(storage.iter_chunks("s/small"))) == b"abc" * 1000
    assert await collect(storage.iter_chunks("s/empty")) == []
    head = await storage.head("s/empty")
    assert head is not None
    assert (head.size, head.content_type) == (0, "text/plain")


async def test_failed_put_stream_keeps_previous_object_and_cleans_up(harness: Harness) -> None:
    storage = harness.storage
    await storage.put_bytes("photos/p.jpg", b"previous", content_type="image/jpeg")

    async def failing() -> AsyncIterator[bytes]:
        # Two full 8 MiB parts first, so S3 has a multipart upload with parts in flight.
        yield os.urandom(9 * MiB)
        yield os.urandom(9 * MiB)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await storage.put_stream("photos/p.jpg", failing(), content_type="image/jpeg")

    assert b"".join(await collect(storage.iter_chunks("photos/p.jpg"))) == b"previous"
    assert await harness.leftovers() == []


async def test_cancelled_put_stream_cleans_up(harness: Harness) -> None:
    started = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        # Two full 8 MiB parts first, so S3 has a multipart upload with parts in flight.
        yield os.urandom(9 * MiB)
        yield os.urandom(9 * MiB)
        started.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    task = asyncio.create_task(
        harness.storage.put_stream("photos/c.jpg", stalled(), content_type="image/jpeg")
    )
    await asyncio.wait_for(started.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await harness.storage.exists("photos/c.jpg") is False
    assert await harness.leftovers() == []


async def test_head_and_exists_of_missing_object(storage: ObjectStorage) -> None:
    await storage.put_bytes("present/x", b"x", content_type="text/plain")

    assert await storage.head("present/y") is None
    assert await storage.exists("present/y") is False
    assert await storage.exists("present/x") is True
    # A "directory" of other keys is not an object.
    assert await storage.head("present") is None


async def test_missing_object_raises_on_read(storage: ObjectStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageObjectNotFound) as excinfo:
        await collect(storage.iter_chunks("nothing/here"))
    assert isinstance(excinfo.value, KeyError)
    assert excinfo.value.key == "nothing/here"

    target = tmp_path / "never.bin"
    with pytest.raises(StorageObjectNotFound):
        await storage.download_to("nothing/here", target)
    assert not target.exists()


async def test_delete_is_idempotent(storage: ObjectStorage) -> None:
    await storage.put_bytes("d/x.bin", b"bytes", content_type="application/octet-stream")

    assert await storage.delete("d/x.bin") is True
    assert await storage.delete("d/x.bin") is False
    assert await storage.exists("d/x.bin") is False
    with pytest.raises(StorageObjectNotFound):
        await collect(storage.iter_chunks("d/x.bin"))


async def test_delete_prefix_counts_and_spares_other_prefixes(storage: ObjectStorage) -> None:
    for key in ("a/1", "a/2", "a/sub/3", "ab/4", "b/5"):
        await storage.put_bytes(key, key.encode(), content_type="text/plain")

    assert await storage.delete_prefix("a/") == 3

    assert [await storage.exists(k) for k in ("a/1", "a/2", "a/sub/3")] == [False] * 3
    assert await storage.exists("ab/4")
    assert await storage.exists("b/5")
    assert await storage.delete_prefix("a/") == 0
    # A prefix is a string prefix, as in S3: "a" also covers "ab/".
    assert await storage.delete_prefix("a") == 1
    assert await storage.exists("b/5")


INVALID_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("../x", id="dotdot"),
    pytest.param("a/../b", id="inner-dotdot"),
    pytest.param("a/./b", id="dot"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a b", id="space"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("a\nb", id="newline"),
    pytest.param("x" * 513, id="too-long"),
    pytest.param("a/" + "b" * 256, id="segment-too-long"),
]


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_are_refused_by_every_method(
    storage: ObjectStorage, key: str, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: storage.put_bytes(key, b"x", content_type="text/plain"),
        lambda: storage.put_stream(key, stream(b"x", 1), content_type="text/plain"),
        lambda: storage.put_file(key, source, content_type="text/plain"),
        lambda: collect(storage.iter_chunks(key)),
        lambda: storage.download_to(key, tmp_path / "out"),
        lambda: storage.head(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.download_url(key, expires_in=60),
    ]
    for call in calls:
        with pytest.raises(InvalidStorageKey):
            await call()
    if key != "a/":  # a trailing slash is fine in a prefix
        with pytest.raises(InvalidStorageKey):
            await storage.delete_prefix(key)
    assert not (tmp_path / "out").exists()


async def test_longest_valid_key_round_trips(storage: ObjectStorage) -> None:
    key = validate_key("k" * 255 + "/" + "e" * 254 + "/y")
    assert len(key) == 512

    await storage.put_bytes(key, b"long", content_type="text/plain")

    assert b"".join(await collect(storage.iter_chunks(key))) == b"long"


async def test_download_url_serves_the_bytes(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    data = os.urandom(300_000)
    await storage.put_bytes("photos/1/a.png", data, content_type="image/png")

    url = await storage.download_url("photos/1/a.png", expires_in=300)
    response = await http.get(url)

    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert "content-disposition" not in response.headers


async def test_download_url_with_filename_sets_content_disposition(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    await storage.put_bytes("exports/x.zip", b"PK\x03\x04", content_type="application/zip")

    url = await storage.download_url("exports/x.zip", expires_in=300, filename="my avatar é.zip")
    response = await http.get(url)

    assert response.status_code == 200, response.text
    assert response.content == b"PK\x03\x04"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''my%20avatar%20%C3%A9.zip" in disposition
    assert 'filename="my avatar _.zip"' in disposition


async def test_expired_download_url_is_refused(harness: Harness, http: httpx.AsyncClient) -> None:
    await harness.storage.put_bytes("e/x.txt", b"secret", content_type="text/plain")
    url = await harness.storage.download_url("e/x.txt", expires_in=1)
    assert (await http.get(url)).status_code == 200

    await harness.advance_time(2.5)

    response = await http.get(url)
    assert response.status_code == 403
    assert b"secret" not in response.content


# What to change in a download URL, per adapter: (query parameter, new value or None to
# flip the last character of the current value).
TAMPERING = {
    "local": {
        "signature": ("signature", None),
        "expiry": ("expires", "1900000000"),
        "filename": ("filename", "evil.html"),
    },
    "s3": {
        "signature": ("X-Amz-Signature", None),
        "expiry": ("X-Amz-Expires", "604800"),
        "filename": ("response-content-disposition", 'attachment; filename="evil.html"'),
    },
}


@pytest.mark.parametrize("what", ["signature", "expiry", "filename"])
async def test_tampered_download_url_is_refused(
    storage: ObjectStorage, http: httpx.AsyncClient, what: str
) -> None:
    await storage.put_bytes("t/x.txt", b"secret", content_type="text/plain")
    url = await storage.download_url("t/x.txt", expires_in=300, filename="x.txt")
    param, value = TAMPERING["local" if isinstance(storage, LocalStorage) else "s3"][what]
    current = parse_qs(urlsplit(url).query)[param][0]
    assert current != value

    response = await http.get(tamper(url, param, value or flip_last_char(current)))

    assert response.status_code == 403
    assert b"secret" not in response.content


async def test_download_url_for_another_key_is_refused(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    await storage.put_bytes("mine/x.txt", b"mine", content_type="text/plain")
    await storage.put_bytes("theirs/x.txt", b"their content", content_type="text/plain")
    url = await storage.download_url("mine/x.txt", expires_in=300)

    response = await http.get(url.replace("/mine/x.txt", "/theirs/x.txt"))

    assert response.status_code == 403
    assert b"their content" not in response.content


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
async def test_download_url_refuses_bad_lifetimes(storage: ObjectStorage, expires_in: int) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        await storage.download_url("x/y", expires_in=expires_in)


@pytest.mark.parametrize("filename", ["", "a\r\nSet-Cookie: x=1", "../etc/passwd", "a\\b"])
async def test_download_url_refuses_unsafe_filenames(storage: ObjectStorage, filename: str) -> None:
    with pytest.raises(ValueError, match="filename"):
        await storage.download_url("x/y", expires_in=60, filename=filename)


# --- key rules ---


def test_validate_prefix_allows_a_trailing_slash_only() -> None:
    assert validate_prefix("avatars/1/") == "avatars/1/"
    assert validate_prefix("avatars/1") == "avatars/1"
    for bad in ("", "/", "a//", "../", "a/../"):
        with pytest.raises(InvalidStorageKey):
            validate_prefix(bad)


# --- local adapter ---


def test_signed_file_url_verification() -> None:
    sig = sign_file_url(SECRET, "a/b.jpg", 1000, None)
    named = sign_file_url(SECRET, "a/b.jpg", 1000, "b.jpg")

    assert verify_signed_file_url(SECRET, "a/b.jpg", 1000, sig, None, now=999.5)
    assert verify_signed_file_url(SECRET, "a/b.jpg", 1000, sig, None, now=1000)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1000, sig, None, now=1000.001)
    assert not verify_signed_file_url(b"other-secret", "a/b.jpg", 1000, sig, None, now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpeg", 1000, sig, None, now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1001, sig, None, now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1000, sig, "b.jpg", now=0)
    assert verify_signed_file_url(SECRET, "a/b.jpg", 1000, named, "b.jpg", now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1000, named, None, now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1000, named, "c.jpg", now=0)
    assert not verify_signed_file_url(SECRET, "a/b.jpg", 1000, sig.upper() + "é", None, now=0)
    assert not verify_signed_file_url(SECRET, "../b.jpg", 1000, sig, None, now=0)


async def test_local_refuses_symlinks_leading_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage = make_local(tmp_path / "root", FakeClock())
    (storage.root / "escape").symlink_to(outside)

    with pytest.raises(InvalidStorageKey, match="outside the storage root"):
        await storage.put_bytes("escape/x", b"x", content_type="text/plain")
    with pytest.raises(InvalidStorageKey):
        await storage.head("escape/x")
    assert list(outside.iterdir()) == []


async def test_local_delete_removes_empty_directories(tmp_path: Path) -> None:
    storage = make_local(tmp_path / "root", FakeClock())
    await storage.put_bytes("t/1/photos/a.jpg", b"a", content_type="image/jpeg")
    await storage.put_bytes("t/1/photos/b.jpg", b"b", content_type="image/jpeg")
    await storage.put_bytes("t/2/keep.jpg", b"k", content_type="image/jpeg")

    assert await storage.delete_prefix("t/1/") == 2
    assert await storage.delete("t/2/keep.jpg") is True

    leftover = [p for p in storage.root.rglob("*") if p.name != "~meta"]
    assert leftover == []


async def test_local_guesses_content_type_without_metadata(tmp_path: Path) -> None:
    storage = make_local(tmp_path / "root", FakeClock())
    await storage.put_bytes("x/photo.png", b"png", content_type="image/png")
    (storage.root / "~meta" / "x" / "photo.png").unlink()
    (storage.root / "y").mkdir()
    (storage.root / "y" / "data").write_bytes(b"raw")

    head_png = await storage.head("x/photo.png")
    head_raw = await storage.head("y/data")

    assert head_png is not None
    assert (head_png.content_type, head_png.sha256) == ("image/png", None)
    assert head_raw is not None
    assert head_raw.content_type == "application/octet-stream"


# --- file-serving route ---


@pytest_asyncio.fixture
async def local_http(tmp_path: Path) -> AsyncIterator[tuple[LocalStorage, httpx.AsyncClient]]:
    storage = make_local(tmp_path / "root", FakeClock())
    transport = httpx.ASGITransport(app=files_app(storage))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_BASE_URL) as client:
        yield storage, client


async def test_route_sets_caching_and_hardening_headers(
    local_http: tuple[LocalStorage, httpx.AsyncClient],
) -> None:
    storage, client = local_http
    await storage.put_bytes("h/page.html", b"<script>x</script>", content_type="text/html")

    response = await client.get(await storage.download_url("h/page.html", expires_in=90))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, max-age=90"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"expires": "1800000100"},
        {"signature": "0" * 64},
        {"expires": "soon", "signature": "0" * 64},
        {"expires": "9" * 40, "signature": "0" * 64},
    ],
)
async def test_route_refuses_unsigned_requests_as_problem(
    local_http: tuple[LocalStorage, httpx.AsyncClient], query: dict[str, str]
) -> None:
    storage, client = local_http
    await storage.put_bytes("p/x.txt", b"secret", content_type="text/plain")

    response = await client.get("/v1/files/p/x.txt", params=query)

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "file_url_invalid"


async def test_route_answers_404_for_a_deleted_object(
    local_http: tuple[LocalStorage, httpx.AsyncClient],
) -> None:
    storage, client = local_http
    await storage.put_bytes("gone/x.txt", b"x", content_type="text/plain")
    url = await storage.download_url("gone/x.txt", expires_in=60)
    await storage.delete("gone/x.txt")

    response = await client.get(url)

    assert response.status_code == 404
    assert response.json()["code"] == "file_not_found"


async def test_route_answers_404_when_storage_is_not_local(tmp_path: Path) -> None:
    signer = make_local(tmp_path / "root", FakeClock())
    await signer.put_bytes("x/y", b"local bytes", content_type="text/plain")
    url = await signer.download_url("x/y", expires_in=60)
    # Constructing the client touches no network; the route must not use it anyway.
    s3 = S3Storage("unused-bucket", endpoint_url="http://127.0.0.1:9", path_style=True)
    transport = httpx.ASGITransport(app=files_app(s3))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
    await s3.close()

    assert response.status_code == 404
    assert response.json()["code"] == "file_not_found"


# --- S3 adapter ---


async def test_s3_presigns_for_the_public_endpoint(
    s3_server: S3Server, s3_storage: S3Storage
) -> None:
    public = f"http://localhost:{s3_server.port}"
    presigner = s3_server.storage(s3_storage.bucket, public_endpoint_url=public)
    await s3_storage.put_bytes("pub/x.txt", b"public", content_type="text/plain")
    try:
        url = await presigner.download_url("pub/x.txt", expires_in=60)
    finally:
        await presigner.close()

    assert url.startswith(f"{public}/{s3_storage.bucket}/pub/x.txt?")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"public"


async def test_s3_ensure_bucket_creates_once(s3_server: S3Server) -> None:
    storage = s3_server.storage("ensure-bucket-test")
    try:
        await storage.ensure_bucket()
        await storage.ensure_bucket()
        await storage.put_bytes("x", b"x", content_type="text/plain")
        assert await storage.exists("x")
    finally:
        await storage.close()
        client = s3_server.client()
        await asyncio.to_thread(client.delete_bucket, Bucket="ensure-bucket-test")
        client.close()


async def test_s3_delete_prefix_pages_through_more_than_1000_keys(
    s3_storage: S3Storage,
) -> None:
    keys = [f"many/{i:05d}" for i in range(1005)]
    limit = asyncio.Semaphore(8)

    async def put(key: str) -> None:
        async with limit:
            await s3_storage.put_bytes(key, b".", content_type="text/plain")

    await asyncio.gather(*(put(k) for k in keys))
    await s3_storage.put_bytes("other/keep", b".", content_type="text/plain")

    assert await s3_storage.delete_prefix("many/") == 1005

    assert not await s3_storage.exists("many/01004")
    assert await s3_storage.exists("other/keep")
