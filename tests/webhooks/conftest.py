"""Fixtures for webhook tests.

Router tests use the shared app (with this package's router and a fake DNS) inside the
rolled-back test transaction. Delivery tests need real commits (the job engine claims,
runs and records in separate transactions), so, like tests/jobs, they get their own
engine on the migrated database and clean their rows before and after each test; they
POST to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.db import create_engine, create_sessionmaker, session_scope, utcnow
from avatar_api.jobs.registry import JobKind, JobRegistry
from avatar_api.jobs.worker import Worker
from avatar_api.models import Job, Tenant, WebhookDelivery, WebhookEndpoint
from avatar_api.services import Services
from avatar_api.settings import Settings
from avatar_api.storage.local import LocalStorage
from avatar_api.webhooks import service
from avatar_api.webhooks.delivery import WEBHOOK_JOB_KINDS
from avatar_api.webhooks.events import WebhookEventType
from avatar_api.webhooks.router import get_resolver
from avatar_api.webhooks.schemas import WebhookEndpointCreate, WebhookEndpointCreated
from avatar_api.webhooks.ssrf import IPAddress, Resolver
from tests.conftest import make_settings
from tests.fakes import RecordingGateway

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
TEST_TENANT_PREFIX = "webhook-test-"


class FakeResolver:
    """A DNS table; unknown names fail like NXDOMAIN. Records every lookup."""

    def __init__(self, table: dict[str, Sequence[str]] | None = None) -> None:
        self.table: dict[str, list[IPAddress]] = {}
        self.calls: list[tuple[str, int]] = []
        for host, addresses in (table or {}).items():
            self.set(host, *addresses)

    def set(self, host: str, *addresses: str) -> None:
        self.table[host] = [ipaddress.ip_address(a) for a in addresses]

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(
        {
            "hooks.example.com": [PUBLIC_V4],
            "v6.example.com": [PUBLIC_V6],
            "dual.example.com": [PUBLIC_V4, PUBLIC_V6],
            "internal.example.com": ["10.0.0.7"],
            "metadata.example.com": ["169.254.169.254"],
            "mixed.example.com": [PUBLIC_V4, "127.0.0.1"],
            "mapped.example.com": [PUBLIC_V6, "::ffff:127.0.0.1"],
        }
    )


@pytest.fixture
def app(app: FastAPI, resolver: FakeResolver) -> FastAPI:
    app.dependency_overrides[get_resolver] = lambda: resolver
    return app


# --- delivery tests: a real engine and real commits ---


@dataclass
class Clock:
    """Real time plus an offset the test can move forward."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(Job))
        # Endpoints and deliveries go with their tenants (ON DELETE CASCADE).
        await conn.execute(delete(Tenant).where(col(Tenant.name).startswith(TEST_TENANT_PREFIX)))


@pytest.fixture
async def wh_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url=database_url))
    await _reset(engine)
    try:
        yield engine
    finally:
        await _reset(engine)
        await engine.dispose()


@pytest.fixture
def wh_sessionmaker(wh_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(wh_engine)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def delivery_settings(database_url: str, tmp_path: Path) -> Settings:
    # The receiver listens on 127.0.0.1, which the SSRF guard refuses unless told otherwise.
    return make_settings(
        database_url=database_url,
        storage_local_root=tmp_path / "storage",
        webhook_allow_private_targets=True,
        webhook_timeout_seconds=0.5,
        webhook_max_attempts=3,
    )


@pytest.fixture
async def services(
    delivery_settings: Settings,
    wh_sessionmaker: async_sessionmaker[AsyncSession],
    clock: Clock,
    tmp_path: Path,
) -> AsyncIterator[Services]:
    async with httpx.AsyncClient() as http:
        yield Services(
            settings=delivery_settings,
            sessionmaker=wh_sessionmaker,
            storage=LocalStorage(
                tmp_path / "storage",
                public_base_url="http://test",
                signing_secret=b"webhooks-test-secret",
            ),
            gateway=RecordingGateway(),
            http=http,
            clock=clock,
        )


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def make_worker(services: Services) -> WorkerFactory:
    def make(
        kinds: Iterable[JobKind] = WEBHOOK_JOB_KINDS, *, settings: Settings | None = None
    ) -> Worker:
        worker_services = services
        if settings is not None:
            worker_services = Services(
                settings=settings,
                sessionmaker=services.sessionmaker,
                storage=services.storage,
                gateway=services.gateway,
                http=services.http,
                clock=services.clock,
            )
        # One job per run_once, so tests step through deliveries one at a time.
        return Worker(
            services=worker_services,
            registry=JobRegistry(kinds),
            concurrency=1,
            lease_seconds=30,
            poll_interval=0.05,
        )

    return make


@pytest.fixture
async def tenant_id(wh_sessionmaker: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    async with session_scope(wh_sessionmaker) as session:
        tenant = Tenant(name=f"{TEST_TENANT_PREFIX}{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        await session.flush()
        return tenant.id


async def register(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    tenant_id: uuid.UUID,
    url: str,
    settings: Settings,
    resolver: Resolver | None = None,
    events: Sequence[WebhookEventType] = (WebhookEventType.avatar_training_completed,),
) -> WebhookEndpointCreated:
    """Register an endpoint through the service (SSRF check included) and commit it."""
    async with session_scope(sessionmaker) as session:
        return await service.create_endpoint(
            session,
            principal=Principal(tenant_id=tenant_id, api_key_id=uuid.uuid4()),
            data=WebhookEndpointCreate(url=url, events=list(events)),
            settings=settings,
            resolver=resolver or FakeResolver(),
        )


async def deliveries_of(
    sessionmaker: async_sessionmaker[AsyncSession], endpoint_id: uuid.UUID
) -> list[WebhookDelivery]:
    async with sessionmaker() as session:
        rows = await session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(col(WebhookDelivery.created_at))
        )
        return list(rows.all())


async def load_endpoint(
    sessionmaker: async_sessionmaker[AsyncSession], endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    async with sessionmaker() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        return endpoint


async def delivery_jobs(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Job]:
    async with sessionmaker() as session:
        rows = await session.exec(
            select(Job).where(Job.kind == "webhook.deliver").order_by(col(Job.created_at))
        )
        return list(rows.all())


# --- the receiving end ---


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 (optionally TLS).

    Records each request and answers with the next scripted :class:`Reply` (204 once the
    script runs out); one request per connection.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.requests: list[Received] = []
        self.replies: list[Reply] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, path, _version = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, body))
            reply = self.replies.pop(0) if self.replies else Reply()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            writer.write(
                f"HTTP/1.1 {reply.status} Scripted\r\nContent-Length: 0\r\n"
                f"Connection: close\r\n{extra}\r\n".encode("latin-1")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client gave up (a timeout test) or refused our certificate
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- TLS: a throwaway CA and a server certificate for one host name ---


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def make_pki(directory: Path, server_name: str) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki
