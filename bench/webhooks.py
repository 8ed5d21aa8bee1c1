"""Bar 2, webhook ingestion: signed fal webhooks, verified and stored once, vs a bare POST.

Trainings in test mode are written to a fresh PostgreSQL database (one per webhook, as fal
sends one per request). Right before the run (signatures are valid for 300 s) a request
file is generated: every training's webhook signed with the simulator's key, and 30% of
the entries re-deliveries of an earlier one, byte for byte. wrk replays the file in order
against our receiver and, with the same file, against a bare route of the same path.

Then the side effects are checked: every distinct webhook wrk sent is stored exactly once
(one `fal_webhook_events` row and one apply job each) and answered "accepted" exactly once
over all its deliveries; deliveries still in flight when wrk stopped (at most one per
connection) are re-sent, and a sample of stored ones is re-sent and must answer
"duplicate" without adding anything.

What limits it (py-spy on the server under this load, 2-core bench machine, 2026-12-06):
CPU, in the server process: 1.3-1.9 ms per delivery over the runs, against 0.13-0.19 ms for
the bare route. The info row runs our app with the receiver swapped for one that answers at
once (routing, middleware, access log all as deployed): 40% of the bare rate, 0.37 ms. The
rest is the work itself: storing through SQLAlchemy and asyncpg about a third (the one
statement, with its many parameters), the signature check about a ninth (one Ed25519
verification alone is 0.11 ms here), FastAPI's dependency solving (the request's session)
about a tenth, the log lines about a tenth. The floor and the verification come to ~0.48 ms,
a ceiling of ~31% with storage for free; one write through SQLAlchemy costs 0.2 ms or more
(see the reads floor), which makes ~0.68 ms, 22% of bare, before parsing the body, the
session and the delivery's log line.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlmodel import col, func, select

from bench.util import (
    BenchError,
    Outcome,
    Row,
    Server,
    Stack,
    WrkResult,
    base_env,
    fmt,
    pct,
    run_cli,
    stack,
    wrk,
)

NAME = "webhooks"
RPS_BAR = 0.25
DUPLICATE_SHARE = 0.30
MEASURED = 12_000  # entries in the measured file; wrk wraps around if it gets through them
WARMUP = 400
LUA = Path(__file__).with_name("webhooks.lua")
ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


@dataclass
class Delivery:
    path: str
    request_id: str
    body: bytes


def _settings(database_url: str):  # type: ignore[no-untyped-def]
    from avatar_api.settings import Settings
    from bench.util import SECRET_KEY

    return Settings(_env_file=None, database_url=database_url, secret_key=SECRET_KEY)


async def _seed(database_url: str, count: int) -> list[tuple[uuid.UUID, str]]:
    """`count` in-progress test-mode trainings with fal request ids: (training id, request id)."""
    from avatar_api.db import create_engine, create_sessionmaker, session_scope, utcnow
    from avatar_api.models import Avatar, Tenant, Training, TrainingStatus, TrainingType

    settings = _settings(database_url)
    engine = create_engine(settings)
    out: list[tuple[uuid.UUID, str]] = []
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            tenant = Tenant(name="bench-webhooks")
            session.add(tenant)
            await session.flush()
            avatar = Avatar(
                tenant_id=tenant.id,
                name="Bench",
                training_type=TrainingType.portrait,
                trigger_phrase="PERSON_bench",
            )
            session.add(avatar)
            await session.flush()
            now = utcnow()
            for start in range(0, count, 1000):
                batch = []
                for attempt in range(start + 1, min(count, start + 1000) + 1):
                    training = Training(
                        tenant_id=tenant.id,
                        avatar_id=avatar.id,
                        attempt=attempt,
                        status=TrainingStatus.in_progress,
                        endpoint=ENDPOINT,
                        test_mode=True,
                        photo_count=10,
                        request_id=str(uuid.uuid4()),
                        submitted_at=now,
                        started_at=now,
                    )
                    batch.append(training)
                    out.append((training.id, str(training.request_id)))
                session.add_all(batch)
                await session.flush()
    finally:
        await engine.dispose()
    return out


def _deliveries(database_url: str, trainings: list[tuple[uuid.UUID, str]]) -> list[Delivery]:
    from avatar_api.training.tokens import webhook_token

    settings = _settings(database_url)
    out = []
    for training_id, request_id in trainings:
        payload = {
            "diffusers_lora_file": {
                "url": f"https://v3.fal.media/files/bench/{request_id}/pytorch_lora_weights.safetensors",
                "content_type": "application/octet-stream",
                "file_name": "pytorch_lora_weights.safetensors",
                "file_size": 89745224,
            },
            "config_file": {
                "url": f"https://v3.fal.media/files/bench/{request_id}/config.json",
                "content_type": "application/json",
                "file_name": "config.json",
                "file_size": 1123,
            },
        }
        body = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": payload,
        }
        path = f"/v1/webhooks/fal/{training_id}/{webhook_token(settings, training_id)}"
        out.append(Delivery(path, request_id, json.dumps(body, separators=(",", ":")).encode()))
    return out


def _with_duplicates(unique: list[Delivery], total: int, rng: random.Random) -> list[Delivery]:
    """`total` deliveries: the unique ones in order, 30% re-deliveries of recent ones mixed in."""
    sequence: list[Delivery] = []
    sent: list[Delivery] = []
    it = iter(unique)
    while len(sequence) < total:
        if sent and rng.random() < DUPLICATE_SHARE:
            sequence.append(rng.choice(sent[-200:]))  # fal retries soon after
            continue
        delivery = next(it, None)
        if delivery is None:
            break
        sequence.append(delivery)
        sent.append(delivery)
    return sequence


def _write_signed(path: Path, deliveries: list[Delivery], database_url: str) -> None:
    """Sign now (fal's signatures are checked against a 300 s window) and write wrk's file."""
    from avatar_api.fal.simulator import SIMULATOR_USER_ID, simulator_signer

    signer = simulator_signer(_settings(database_url))
    stamp = int(time.time())
    cache: dict[str, str] = {}
    lines = []
    for d in deliveries:
        line = cache.get(d.request_id)
        if line is None:
            headers = signer.sign(d.request_id, SIMULATOR_USER_ID, d.body, stamp)
            line = "\t".join(
                [
                    d.path,
                    d.request_id,
                    headers["X-Fal-Webhook-Timestamp"],
                    headers["X-Fal-Webhook-Signature"],
                    d.body.decode(),
                ]
            )
            cache[d.request_id] = line
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def _replay_headers(database_url: str, d: Delivery) -> dict[str, str]:
    from avatar_api.fal.simulator import SIMULATOR_USER_ID, simulator_signer

    headers = simulator_signer(_settings(database_url)).sign(
        d.request_id, SIMULATOR_USER_ID, d.body, int(time.time())
    )
    return {**headers, "Content-Type": "application/json"}


async def _replay(
    base_url: str, database_url: str, deliveries: list[Delivery]
) -> dict[str, list[str]]:
    """POST each delivery once more; request ids by answer ("accepted", "duplicate", other)."""
    answers: dict[str, list[str]] = {}
    gate = asyncio.Semaphore(8)

    async def one(client: httpx.AsyncClient, d: Delivery) -> None:
        async with gate:
            response = await client.post(
                d.path, content=d.body, headers=_replay_headers(database_url, d)
            )
        answer = response.json().get("status") if response.status_code == 200 else None
        key = answer if answer in ("accepted", "duplicate") else f"http {response.status_code}"
        answers.setdefault(key, []).append(d.request_id)

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(one(client, d) for d in deliveries))
    return answers


async def _stored(database_url: str) -> tuple[list[str], dict[str, int]]:
    """Request ids of the stored webhook events, and the jobs enqueued by kind."""
    from avatar_api.db import create_engine
    from avatar_api.models import FalWebhookEvent, Job

    engine = create_engine(_settings(database_url))
    try:
        async with engine.connect() as conn:
            ids = list((await conn.execute(select(col(FalWebhookEvent.request_id)))).scalars())
            rows = await conn.execute(select(col(Job.kind), func.count()).group_by(col(Job.kind)))
            kinds = {str(kind): int(n) for kind, n in rows.all()}
    finally:
        await engine.dispose()
    return ids, kinds


def _settle(database_url: str, seconds: float = 15.0) -> list[str]:
    """The stored request ids once the count stops moving (in-flight requests are done)."""
    deadline = time.monotonic() + seconds
    previous: list[str] | None = None
    while True:
        time.sleep(0.5)
        ids, _ = asyncio.run(_stored(database_url))
        if (previous is not None and len(ids) == len(previous)) or time.monotonic() > deadline:
            return ids
        previous = ids


def _load(
    s: Stack, label: str, app: str, env: dict[str, str], files: tuple[Path, Path]
) -> tuple[WrkResult, Server]:
    server = s.uvicorn(label, app, env)
    warmup, measured = files
    wrk(f"{server.url}/", seconds=2, script=LUA, script_args=[str(warmup)])
    result = wrk(
        f"{server.url}/", script=LUA, script_args=[str(measured)], server_pid=server.proc.pid
    )
    return result, server


def run() -> Outcome:
    from avatar_api.training.tasks import APPLY_EVENT_JOB

    outcome = Outcome(NAME)
    rng = random.Random(20261125)
    with stack(NAME) as s:
        database_url = s.postgres()
        env = base_env(AVATAR_DATABASE_URL=database_url, AVATAR_STORAGE_LOCAL_ROOT=s.dir / "st")
        run_cli(["migrate"], env, s.dir)
        unique_needed = int(MEASURED * (1 - DUPLICATE_SHARE)) + 200
        trainings = asyncio.run(_seed(database_url, WARMUP + unique_needed))
        deliveries = _deliveries(database_url, trainings)
        warm_unique, main_unique = deliveries[:WARMUP], deliveries[WARMUP:]
        sequence = _with_duplicates(main_unique, MEASURED, rng)
        warm_sequence = _with_duplicates(warm_unique, WARMUP * 2, rng)

        warm_file, main_file = s.dir / "warmup.tsv", s.dir / "measured.tsv"
        # Bare first, with its own signing moment; ours signs again right before its run.
        _write_signed(warm_file, warm_sequence, database_url)
        _write_signed(main_file, sequence, database_url)
        bare, server = _load(s, "bare", "bench.bare_app:app", base_env(), (warm_file, main_file))
        server.stop()
        floor, server = _load(
            s, "floor", "bench.receiver_floor_app:app", env, (warm_file, main_file)
        )
        server.stop()
        # Its answers are all its own: nothing stored, nothing but "accepted".
        if (
            asyncio.run(_stored(database_url))[0]
            or floor.non_2xx
            or int(floor.extra.get("other", "0"))
            or int(floor.extra.get("duplicate", "0"))
        ):
            raise BenchError("the floor app did not answer every delivery itself")

        _write_signed(warm_file, warm_sequence, database_url)
        _write_signed(main_file, sequence, database_url)
        ours, server = _load(s, "api", "avatar_api.main:app", env, (warm_file, main_file))
        stored_ids = _settle(database_url)

        sent = min(int(ours.extra.get("sent", "0")), len(sequence))
        sent_prefix = sequence[:sent]
        distinct_sent = {d.request_id: d for d in sent_prefix}
        stored = set(stored_ids)
        # Deliveries in flight when wrk stopped (at most one per connection) may not have
        # been processed; re-sent now, each must be accepted (first time) or a duplicate.
        missing = [d for rid, d in distinct_sent.items() if rid not in stored]
        stored_sent = sorted(rid for rid in distinct_sent if rid in stored)
        sample = [distinct_sent[i] for i in rng.sample(stored_sent, min(200, len(stored_sent)))]
        replay = asyncio.run(_replay(server.url, database_url, missing + sample))
        final_ids, jobs = asyncio.run(_stored(database_url))
        server.stop()

    warm_ids = {d.request_id for d in warm_unique}
    final_main = [i for i in final_ids if i not in warm_ids]
    applies = jobs.get(APPLY_EVENT_JOB, 0)
    # Each distinct webhook must be answered "accepted" exactly once over all its
    # deliveries; the answers wrk did not see (in flight at the end) are at most 64.
    accepted = int(ours.extra.get("accepted", "0")) + len(replay.get("accepted", []))
    unseen = len(distinct_sent) - accepted
    sample_ok = set(replay.get("duplicate", [])) >= {d.request_id for d in sample}
    errors = (
        ours.non_2xx
        + int(ours.extra.get("other", "0"))
        + sum(len(v) for k, v in replay.items() if k.startswith("http"))
    )
    exact = (
        len(final_main) == len(set(final_main)) == len(distinct_sent)
        and applies == len(final_ids)
        and 0 <= unseen <= 64
        and sample_ok
        and errors == 0
    )
    share = 1 - len(distinct_sent) / max(1, len(sent_prefix))
    ratio = ours.rps / bare.rps
    outcome.rows += [
        Row(
            NAME,
            "signed fal webhooks req/s",
            fmt(ours.rps, digits=0),
            fmt(bare.rps, digits=0),
            pct(ratio),
            f">= {pct(RPS_BAR)}",
            ratio >= RPS_BAR and ours.non_2xx == 0,
            f"{share:.0%} re-deliveries among {len(sent_prefix):,} sent; "
            f"p99 {fmt(ours.p99, 'ms')} vs {fmt(bare.p99, 'ms')}; {ours.cpu_note()} "
            f"(bare {bare.cpu_ms_per_request or 0:.2f} ms)",
        ),
        Row(
            NAME,
            "stored once (events = distinct bodies)",
            f"{len(set(final_main)):,} events",
            f"{len(distinct_sent):,} distinct",
            "=" if len(set(final_main)) == len(distinct_sent) else "!=",
            "exact",
            exact,
            f"apply jobs {applies:,} for {len(final_ids):,} events (incl. warm-up); "
            f"accepted answers {accepted:,} (+{unseen} unseen, in flight at the end); "
            f"{len(missing)} re-sent after the run; {len(sample)} stored ones re-sent: "
            f"{'all' if sample_ok else 'NOT all'} duplicate; errors {errors}",
        ),
        Row(
            NAME,
            "floor: our app, a receiver answering at once, req/s",
            fmt(floor.rps, digits=0),
            fmt(bare.rps, digits=0),
            pct(floor.rps / bare.rps),
            f">= {pct(RPS_BAR)}",
            None,
            f"reference, bench/receiver_floor_app.py (no verification, no storage); "
            f"{floor.cpu_note()} (bare {bare.cpu_ms_per_request or 0:.2f} ms)",
        ),
    ]
    return outcome
