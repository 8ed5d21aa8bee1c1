"""Bar 1, reads: `GET /v1/avatars/{id}` with API-key auth against a bare FastAPI route.

Both servers run under the same uvicorn settings (one worker, uvloop, httptools, no access
log from uvicorn) and take the same wrk load: 64 connections, one wrk thread, a warm-up,
then 10 s. Ours runs as deployed: PostgreSQL (and, as a second row, the embedded SQLite
file), JSON logs at INFO, the per-key rate limit counting (with a limit never reached).
An informational row measures bench/floor_app.py, a bare route that makes only the one
primary-key SELECT (Core, no auth, no logging), on the same database and avatar: the part
of the distance to the bare route that the database read alone accounts for.

What limits it (py-spy on the server under this load, 2-core bench machine, 2026-12-06):
CPU, in the server process. The bare route costs ~0.12 ms per request; the floor app, whose
only addition is the SELECT through SQLAlchemy and asyncpg, already costs 0.5-0.67 ms
(18-24% of bare over the runs); ours costs 0.8-1.1 ms (12-16%). Of ours, the SQLAlchemy
connection and statement take about a third, FastAPI's dependency solving about a tenth,
the access-log line and metrics about a tenth, the middleware stack and routing most of
the rest; the key check, the rate limit and the response model are each a few percent.
Fixed on the way (commit c464a44): garbage collection had taken ~20% of the CPU, with
100 ms pauses; every ~1,000 requests the rate limiter's block ran out and the requests
that found it empty were let through one per event-loop turn (up to 0.4 s); the connection
pool let new requests take connections ahead of waiting ones (p99 4x the median). A p99
within 3x the bare one needs the throughput first: at 64 connections the median is
64 / throughput.
"""

from __future__ import annotations

import httpx

from bench.util import (
    Outcome,
    Row,
    Stack,
    WrkResult,
    base_env,
    fmt,
    pct,
    run_cli,
    stack,
    wrk_measured,
)

NAME = "reads"
RPS_BAR = 0.40
P99_BAR = 3.0


def _ours(
    s: Stack, label: str, database_url: str, *, floor: bool = False, **env_overrides: object
) -> tuple[WrkResult, WrkResult | None]:
    """Ours; with ``floor``, then bench/floor_app.py on the same database and avatar."""
    env = base_env(
        AVATAR_DATABASE_URL=database_url,
        AVATAR_STORAGE_LOCAL_ROOT=s.dir / f"storage-{label}",
        **env_overrides,
    )
    run_cli(["migrate"], env, s.dir)
    key = run_cli(["keys", "create", "--tenant", f"bench-{label}"], env, s.dir).strip()
    server = s.uvicorn(f"api-{label}", "avatar_api.main:app", env)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(
            f"{server.url}/v1/avatars",
            json={"name": "Bench", "training_type": "portrait"},
            headers=headers,
            timeout=10,
        )
        created.raise_for_status()
        url = f"{server.url}/v1/avatars/{created.json()['id']}"
        check = httpx.get(url, headers=headers, timeout=10)
        check.raise_for_status()
        ours = wrk_measured(url, headers=headers, server_pid=server.proc.pid)
    finally:
        server.stop()
    if not floor:
        return ours, None
    reference = s.uvicorn(f"floor-{label}", "bench.floor_app:app", env)
    try:
        path = url.removeprefix(server.url)
        httpx.get(reference.url + path, timeout=10).raise_for_status()
        return ours, wrk_measured(reference.url + path, server_pid=reference.proc.pid)
    finally:
        reference.stop()


def _bare(s: Stack) -> WrkResult:
    server = s.uvicorn("bare", "bench.bare_app:app", base_env())
    try:
        return wrk_measured(
            f"{server.url}/v1/avatars/3b241101-e2bb-4255-8caf-4136c566a962",
            server_pid=server.proc.pid,
        )
    finally:
        server.stop()


def _rows(label: str, ours: WrkResult, bare: WrkResult, *, bars: bool, note: str) -> list[Row]:
    rps_ratio = ours.rps / bare.rps
    p99_ratio = ours.p99 / bare.p99
    errors = ours.non_2xx + ours.socket_errors
    note = f"{note}; {ours.cpu_note()} (bare {bare.cpu_ms_per_request or 0:.2f} ms)"
    note += f"; {errors} errors/non-2xx" if errors else ""
    return [
        Row(
            NAME,
            f"GET /v1/avatars/{{id}} req/s ({label})",
            fmt(ours.rps, digits=0),
            fmt(bare.rps, digits=0),
            pct(rps_ratio),
            f">= {pct(RPS_BAR)}",
            (rps_ratio >= RPS_BAR and errors == 0) if bars else None,
            note,
        ),
        Row(
            NAME,
            f"GET /v1/avatars/{{id}} p99 ({label})",
            fmt(ours.p99, "ms"),
            fmt(bare.p99, "ms"),
            f"{p99_ratio:.1f}x",
            f"<= {P99_BAR:.0f}x",
            (p99_ratio <= P99_BAR) if bars else None,
            f"p50 {fmt(ours.p50, 'ms')} vs {fmt(bare.p50, 'ms')}",
        ),
    ]


def run() -> Outcome:
    outcome = Outcome(NAME)
    with stack(NAME) as s:
        bare = _bare(s)
        pg, floor = _ours(s, "pg", s.postgres(), floor=True)
        sqlite, _ = _ours(s, "sqlite", f"sqlite+aiosqlite:///{s.dir / 'reads.db'}")
    outcome.rows += _rows("PostgreSQL", pg, bare, bars=True, note="as deployed")
    outcome.rows += _rows("SQLite", sqlite, bare, bars=True, note="embedded default")
    if floor is not None:
        outcome.rows += _rows(
            "floor: bare route + one SELECT, PostgreSQL",
            floor,
            bare,
            bars=False,
            note="reference, bench/floor_app.py",
        )
    return outcome
