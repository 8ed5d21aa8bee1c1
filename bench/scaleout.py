"""Bar 5, scale-out: 4 worker processes drain 200 test-mode trainings on PostgreSQL.

An API server runs (the simulator downloads archives from it and posts its webhooks to
it: AVATAR_PUBLIC_BASE_URL points at it, AVATAR_EMBEDDED_WORKER=false). Avatars, their
10 photos each (normalised by our pipeline, stored by the storage adapter) and their
trainings are created with the service code (`training.service.start_training`, which
enqueues the submit job), then `avatar-api worker` processes start and the clock runs
until every training is terminal. The simulator is fast (0.2 s queue, 0.5 s training).

Checked: every training completed, has a fal request id, and was submitted exactly once
(one simulated request per training, carrying that id). The baseline is one worker
process draining another 200 trainings the same way: the ratio is the scale-out speed-up.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, func, select

from bench.util import (
    BenchError,
    Outcome,
    Proc,
    Row,
    Server,
    Stack,
    base_env,
    cpu_seconds,
    fmt,
    machine_busy_seconds,
    postgres_cpu_seconds,
    run_cli,
    stack,
)

NAME = "scaleout"
TRAININGS = 200
WORKERS = 4
PHOTOS = 10
DRAIN_TIMEOUT = 600.0
TERMINAL = ("completed", "failed", "cancelled")
SIMULATOR = {
    "AVATAR_SIMULATOR_QUEUE_SECONDS": "0.2",
    "AVATAR_SIMULATOR_TRAIN_SECONDS": "0.5",
    "AVATAR_JOB_POLL_INTERVAL_SECONDS": "0.05",
}


@dataclass
class Drain:
    workers: int
    seconds: float
    statuses: dict[str, int]
    without_request_id: int
    submissions: dict[int, int]  # simulated requests per training -> how many trainings
    mismatched_ids: int
    first_submit_to_last_done: float
    cpu: dict[str, float]  # CPU seconds during the drain, by who

    @property
    def rate(self) -> float:
        return TRAININGS / self.seconds

    @property
    def exact(self) -> bool:
        return (
            self.statuses == {"completed": TRAININGS}
            and self.without_request_id == 0
            and self.submissions == {1: TRAININGS}
            and self.mismatched_ids == 0
        )


def _settings(env: dict[str, str]) -> Any:
    from avatar_api.settings import Settings

    values: dict[str, Any] = {
        k.removeprefix("AVATAR_").lower(): v for k, v in env.items() if k.startswith("AVATAR_")
    }
    return Settings(_env_file=None, **values)


async def _seed(env: dict[str, str], tag: str) -> list[uuid.UUID]:
    """TRAININGS avatars with PHOTOS photos each, and a queued training for each."""
    from PIL import Image
    from tests.photos.portraits import portrait_jpegs

    from avatar_api.auth.service import Principal, create_api_key
    from avatar_api.bootstrap import build_services
    from avatar_api.db import create_engine, create_sessionmaker, session_scope
    from avatar_api.models import Avatar, Photo, TrainingType
    from avatar_api.photos.processing import normalise_photo
    from avatar_api.storage_keys import photo_key
    from avatar_api.training.schemas import TrainingStart
    from avatar_api.training.service import start_training

    settings = _settings(env)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    services = build_services(settings, sessionmaker)
    # The photos an upload would have stored: normalised once, the same set per avatar.
    normalised = []
    work = settings.storage_local_root / f".seed-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(portrait_jpegs(PHOTOS)):
        src, dst = work / f"src-{i}.jpg", work / f"out-{i}.jpg"
        with Image.open(io.BytesIO(data)) as image:
            image.save(src)
        normalised.append((normalise_photo(src, dst), dst.read_bytes()))
    ids = []
    try:
        async with session_scope(sessionmaker) as session:
            issued = await create_api_key(session, tenant_name=f"bench-scaleout-{tag}")
        principal = Principal(tenant_id=issued.tenant.id, api_key_id=issued.api_key.id)
        for n in range(TRAININGS):
            async with session_scope(sessionmaker) as session:
                avatar = Avatar(
                    tenant_id=principal.tenant_id,
                    name=f"Bench {tag} {n}",
                    training_type=TrainingType.portrait,
                    trigger_phrase=f"PERSON_{tag}{n}",
                )
                session.add(avatar)
                await session.flush()
                for i, (facts, jpeg) in enumerate(normalised):
                    photo_id = uuid.uuid4()
                    key = photo_key(principal.tenant_id, avatar.id, photo_id)
                    await services.storage.put_bytes(key, jpeg, content_type="image/jpeg")
                    session.add(
                        Photo(
                            id=photo_id,
                            tenant_id=principal.tenant_id,
                            avatar_id=avatar.id,
                            filename=f"p{i}.jpg",
                            storage_key=key,
                            source_format=facts.source_format,
                            width=facts.width,
                            height=facts.height,
                            size_bytes=facts.size_bytes,
                            sha256=facts.sha256,
                            phash=facts.phash,
                            face_count=facts.face_count,
                            face_box=list(facts.face_box) if facts.face_box else None,
                            face_score=facts.face_score,
                        )
                    )
                await session.flush()
                training = await start_training(
                    session,
                    services=services,
                    principal=principal,
                    avatar_id=avatar.id,
                    data=TrainingStart(),
                )
                ids.append(training.id)
    finally:
        await services.aclose()
        await engine.dispose()
    return ids


async def _wait_terminal(
    env: dict[str, str], ids: list[uuid.UUID], procs: list[Proc]
) -> dict[str, int]:
    """Poll (one connection, every 0.2 s) until every training is terminal; their statuses."""
    from avatar_api.db import create_engine
    from avatar_api.models import Training

    query = (
        select(col(Training.status), func.count())
        .where(col(Training.id).in_(ids))
        .group_by(col(Training.status))
    )
    engine = create_engine(_settings(env))
    deadline = time.monotonic() + DRAIN_TIMEOUT
    statuses: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                rows = (await conn.execute(query)).all()
                await conn.commit()  # a fresh snapshot for the next poll
                statuses = {str(getattr(st, "value", st)): int(n) for st, n in rows}
                if sum(n for st, n in statuses.items() if st in TERMINAL) == len(ids):
                    return statuses
                for proc in procs:
                    if not proc.alive():
                        raise BenchError(f"{proc.name} exited:\n{proc.tail()}")
    finally:
        await engine.dispose()
    raise BenchError(f"not drained after {DRAIN_TIMEOUT:.0f} s: {statuses}")


async def _audit(
    env: dict[str, str], ids: list[uuid.UUID]
) -> tuple[int, dict[int, int], int, float]:
    """(trainings without request id, histogram of submissions per training,
    request ids that differ from the simulator's, first submit to last completion in s)."""
    from avatar_api.db import create_engine
    from avatar_api.models import SimulatedRequest, Training

    engine = create_engine(_settings(env))
    try:
        async with engine.connect() as conn:
            trainings = (
                await conn.execute(
                    select(
                        col(Training.id),
                        col(Training.request_id),
                        col(Training.submitted_at),
                        col(Training.completed_at),
                    ).where(col(Training.id).in_(ids))
                )
            ).all()
            simulated = (
                await conn.execute(
                    select(col(SimulatedRequest.request_id), col(SimulatedRequest.webhook_url))
                )
            ).all()
    finally:
        await engine.dispose()
    wanted = {str(i) for i in ids}
    by_training: dict[str, list[str]] = {}
    for request_id, webhook_url in simulated:
        # The webhook URL is .../v1/webhooks/fal/{training id}/{token}.
        training_id = str(webhook_url or "").rstrip("/").split("/")[-2]
        if training_id in wanted:
            by_training.setdefault(training_id, []).append(request_id)
    without = sum(1 for t in trainings if not t.request_id)
    histogram = Counter(len(by_training.get(str(t.id), [])) for t in trainings)
    mismatched = sum(1 for t in trainings if by_training.get(str(t.id), [None]) != [t.request_id])
    starts = [t.submitted_at for t in trainings if t.submitted_at]
    ends = [t.completed_at for t in trainings if t.completed_at]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return without, dict(histogram), mismatched, span


def _drain(s: Stack, env: dict[str, str], server: Server, workers: int, tag: str) -> Drain:
    ids = asyncio.run(_seed(env, tag))
    worker_env = {**env, "AVATAR_PUBLIC_BASE_URL": server.url, "AVATAR_DATABASE_POOL_SIZE": "5"}
    busy0, pg0, api0 = machine_busy_seconds(), postgres_cpu_seconds(), cpu_seconds(server.proc.pid)
    started = time.monotonic()
    procs = [
        s.start(f"worker-{tag}-{i}", [sys.executable, "-m", "avatar_api.cli", "worker"], worker_env)
        for i in range(workers)
    ]
    try:
        statuses = asyncio.run(_wait_terminal(env, ids, procs))
        seconds = time.monotonic() - started
        cpu = {
            "workers": sum(cpu_seconds(p.pid) for p in procs),
            "api": cpu_seconds(server.proc.pid) - api0,
            "postgres": postgres_cpu_seconds() - pg0,
            "machine": machine_busy_seconds() - busy0,
        }
    finally:
        for proc in procs:
            proc.stop()
    without, histogram, mismatched, span = asyncio.run(_audit(env, ids))
    return Drain(workers, seconds, statuses, without, histogram, mismatched, span, cpu)


def run() -> Outcome:
    outcome = Outcome(NAME)
    with stack(NAME) as s:
        env = base_env(
            AVATAR_DATABASE_URL=s.postgres(),
            AVATAR_STORAGE_LOCAL_ROOT=s.dir / "storage",
            **SIMULATOR,
        )
        run_cli(["migrate"], env, s.dir)
        server = s.uvicorn("api", "avatar_api.main:app", env)
        env["AVATAR_PUBLIC_BASE_URL"] = server.url
        many = _drain(s, env, server, WORKERS, "many")
        one = _drain(s, env, server, 1, "one")
        server.stop()

    speedup = many.rate / one.rate
    cores = os.cpu_count() or 1
    for drain in (many, one):
        baseline = drain is one
        outcome.rows.append(
            Row(
                NAME,
                f"drain {TRAININGS} trainings, {drain.workers} worker process"
                + ("" if baseline else "es"),
                f"{drain.seconds:.1f} s",
                "-" if baseline else f"{one.seconds:.1f} s",
                "-" if baseline else f"{speedup:.2f}x",
                "each once" if not baseline else "",
                # The baseline has no bar of its own, but a wrong drain is a MISS anywhere.
                (None if drain.exact else False) if baseline else drain.exact,
                f"{fmt(drain.rate, 'trainings/s', 2)}; statuses {drain.statuses}; "
                f"submissions per training {drain.submissions}; "
                f"without request id {drain.without_request_id}; "
                f"request id mismatches {drain.mismatched_ids}; "
                f"first submit to last completion {drain.first_submit_to_last_done:.1f} s; "
                f"CPU s: workers {drain.cpu['workers']:.0f}, API {drain.cpu['api']:.0f}, "
                f"PostgreSQL {drain.cpu['postgres']:.0f}, whole machine "
                f"{drain.cpu['machine']:.0f} of {cores * drain.seconds:.0f} available",
            )
        )
    return outcome
