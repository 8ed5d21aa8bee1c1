"""Stopping processes: a killed worker's job runs elsewhere exactly once; SIGTERM hands
jobs back at once; the API's readiness flips the moment SIGTERM arrives.

Workers and the API run as real subprocesses on the session's test database (a SQLite
file, and PostgreSQL when AVATAR_TEST_DATABASE_URL is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from avatar_api.db import create_engine, create_sessionmaker, session_scope
from avatar_api.jobs.queue import enqueue
from avatar_api.migrate import upgrade
from avatar_api.models import Job, JobStatus
from tests.conftest import make_settings
from tests.ops.worker_script import SLEEP_KIND, effects, metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 10  # the smallest lease the settings accept


def _base_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "FAL_"))}
    env.update(
        AVATAR_ENVIRONMENT="test",
        AVATAR_DATABASE_URL=database_url,
        AVATAR_TEST_MODE="true",
        AVATAR_STORAGE_LOCAL_ROOT=str(tmp_path / "storage"),
        AVATAR_LOG_FORMAT="json",
    )
    return env


class Proc:
    """A subprocess whose stderr (JSON log lines) goes to a file we can read while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            args, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=self._file
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def logged(self, event: str) -> bool:
        return any(entry.get("event") == event for entry in self.events())

    async def wait_exit(self, within: float) -> int:
        return await asyncio.to_thread(self.popen.wait, within)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._file.close()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.close()


def spawn_worker(
    procs: list[Proc],
    database_url: str,
    tmp_path: Path,
    *,
    name: str,
    sleep: float,
    lease: int,
    grace: float = 1.0,
) -> Proc:
    env = _base_env(database_url, tmp_path)
    env.update(
        AVATAR_JOB_LEASE_SECONDS=str(lease),
        AVATAR_JOB_POLL_INTERVAL_SECONDS="0.1",
        AVATAR_SHUTDOWN_GRACE_SECONDS=str(grace),
        OPS_SLEEP_SECONDS=str(sleep),
    )
    proc = Proc([sys.executable, "-m", "tests.ops.worker_script"], env, tmp_path / f"{name}.log")
    procs.append(proc)
    return proc


@pytest.fixture
async def ops_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url=database_url))

    async def reset(*, recreate: bool) -> None:
        async with engine.begin() as conn:
            await conn.execute(delete(Job).where(col(Job.kind) == SLEEP_KIND))
            await conn.run_sync(metadata.drop_all)
            if recreate:
                await conn.run_sync(metadata.create_all)

    await reset(recreate=True)
    try:
        yield engine
    finally:
        # test_migrations compares this database with the models: leave no extra table.
        await reset(recreate=False)
        await engine.dispose()


async def add_sleep_job(engine: AsyncEngine) -> uuid.UUID:
    async with session_scope(create_sessionmaker(engine)) as session:
        job = await enqueue(session, kind=SLEEP_KIND, payload={})
    return job.id


async def load_job(engine: AsyncEngine, job_id: uuid.UUID) -> Job:
    async with create_sessionmaker(engine)() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def effect_rows(engine: AsyncEngine) -> list[tuple[str, int, float]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(effects.c.tag, effects.c.pid, effects.c.at).order_by(effects.c.at)
        )
        return [(tag, int(pid), float(at)) for tag, pid, at in rows.all()]


async def wait_until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def first_runner(engine: AsyncEngine) -> int | None:
    """The pid of the worker that started the job first (the one that sleeps)."""
    rows = await effect_rows(engine)
    return rows[0][1] if rows else None


async def test_a_killed_workers_job_finishes_once_on_another_worker_after_its_lease(
    database_url: str, tmp_path: Path, ops_engine: AsyncEngine
) -> None:
    job_id = await add_sleep_job(ops_engine)
    with processes() as procs:
        # Two workers; whichever claims the job first sleeps in it, the other must wait
        # for the lease to expire once the first is killed.
        for name in ("a", "b"):
            spawn_worker(procs, database_url, tmp_path, name=name, sleep=60, lease=LEASE_SECONDS)

        async def started() -> bool:
            return await first_runner(ops_engine) is not None

        await wait_until(started, within=30, what="a worker to start the job")
        holder = await first_runner(ops_engine)
        doomed = next(p for p in procs if p.pid == holder)
        survivor = next(p for p in procs if p is not doomed)
        await asyncio.sleep(0.3)  # mid-job
        doomed.popen.send_signal(signal.SIGKILL)
        assert await doomed.wait_exit(10) == -signal.SIGKILL

        async def succeeded() -> bool:
            return (await load_job(ops_engine, job_id)).status is JobStatus.succeeded

        await wait_until(succeeded, within=LEASE_SECONDS + 20, what="the job to succeed")
        survivor.popen.send_signal(signal.SIGTERM)
        assert await survivor.wait_exit(15) == 0

    job = await load_job(ops_engine, job_id)
    assert job.attempts == 2
    rows = await effect_rows(ops_engine)
    assert [(tag, pid) for tag, pid, _ in rows] == [
        ("started", doomed.pid),
        ("started", survivor.pid),
        ("done", survivor.pid),
    ]
    first_start, second_start = rows[0][2], rows[1][2]
    # Taken over only once the dead worker's lease had expired, not before.
    assert second_start - first_start >= LEASE_SECONDS - 1


async def test_sigterm_hands_the_job_back_so_the_next_worker_runs_it_at_once(
    database_url: str, tmp_path: Path, ops_engine: AsyncEngine
) -> None:
    job_id = await add_sleep_job(ops_engine)
    grace = 1.0
    with processes() as procs:
        # A long lease: the other worker gets the job quickly only if it is handed back.
        for name in ("a", "b"):
            spawn_worker(procs, database_url, tmp_path, name=name, sleep=60, lease=300, grace=grace)

        async def started_and_ready() -> bool:
            return await first_runner(ops_engine) is not None and all(
                p.logged("worker.started") for p in procs
            )

        await wait_until(started_and_ready, within=30, what="both workers, one in the job")
        holder = await first_runner(ops_engine)
        stopping = next(p for p in procs if p.pid == holder)
        successor = next(p for p in procs if p is not stopping)

        sent = time.monotonic()
        stopping.popen.send_signal(signal.SIGTERM)
        assert await stopping.wait_exit(grace + 10) == 0
        assert time.monotonic() - sent < grace + 5
        assert stopping.logged("job.released")

        async def succeeded() -> bool:
            return (await load_job(ops_engine, job_id)).status is JobStatus.succeeded

        await wait_until(succeeded, within=10, what="the other worker to run the job")
        successor.popen.send_signal(signal.SIGTERM)
        assert await successor.wait_exit(15) == 0

    job = await load_job(ops_engine, job_id)
    assert job.attempts == 1  # the interrupted attempt was not counted
    assert [(tag, pid) for tag, pid, _ in await effect_rows(ops_engine)] == [
        ("started", stopping.pid),
        ("started", successor.pid),
        ("done", successor.pid),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_api_readiness_fails_as_soon_as_sigterm_arrives(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
    await asyncio.to_thread(upgrade, make_settings(database_url=database_url))
    port = _free_port()
    drain_delay = 1.5
    env = _base_env(database_url, tmp_path)
    env.update(
        AVATAR_ENVIRONMENT="development",
        AVATAR_SHUTDOWN_DRAIN_DELAY_SECONDS=str(drain_delay),
        AVATAR_SHUTDOWN_GRACE_SECONDS="2",
    )
    base = f"http://127.0.0.1:{port}"
    with processes() as procs:
        api = Proc(
            [sys.executable, "-m", "avatar_api", "serve", "--port", str(port)],
            env,
            tmp_path / "api.log",
        )
        procs.append(api)
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(ready, within=30, what="the API to become ready")
            sent = time.monotonic()
            api.popen.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            draining = await client.get("/readyz")
            # Still accepting and answering during the drain delay, but no longer ready.
            assert draining.status_code == 503
            assert draining.json()["detail"] == "Shutting down."
            assert draining.headers["X-Request-ID"]
            assert (await client.get("/healthz")).status_code == 200
            code = await api.wait_exit(drain_delay + 15)
        assert time.monotonic() - sent >= drain_delay - 0.1
    # uvicorn re-raises the signal after a graceful stop.
    assert code in (0, -signal.SIGTERM), api.log.read_text()
    events = api.events()
    assert any(e.get("event") == "server.draining" for e in events)
    access = [e for e in events if e.get("event") == "http.request"]
    assert any(e["route"] == "/readyz" and e["status"] == 503 for e in access)
    # uvicorn's own access log is off: only our lines, with route templates.
    assert not any(e.get("logger") == "uvicorn.access" for e in events)
