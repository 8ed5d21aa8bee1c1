"""The reconciler's housekeeping and the webhook token's edge cases."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from avatar_api.db import session_scope, utcnow
from avatar_api.jobs.queue import enqueue
from avatar_api.models import IdempotencyKey, Job, JobStatus, Tenant, TrainingQuotaCharge
from avatar_api.training.reconciler import housekeeping
from avatar_api.training.tokens import token_matches, webhook_token
from tests.conftest import make_settings
from tests.live import live_stack
from tests.training.test_e2e import live_settings


async def test_old_finished_jobs_and_idempotency_keys_are_purged(
    database_url: str, tmp_path: Path
) -> None:
    async with live_stack(live_settings(database_url, tmp_path)) as stack:
        services = stack.app.state.services
        now = utcnow()
        async with session_scope(services.sessionmaker) as session:
            tenant = (await session.exec(select(Tenant))).one()
            old, recent, pending = (
                await enqueue(session, kind="x.old", payload={}),
                await enqueue(session, kind="x.recent", payload={}),
                await enqueue(session, kind="x.pending", payload={}),
            )
            old.status, old.finished_at = JobStatus.succeeded, now - timedelta(days=8)
            recent.status, recent.finished_at = JobStatus.succeeded, now - timedelta(days=1)
            session.add_all([old, recent, pending])
            session.add_all(
                [
                    IdempotencyKey(
                        tenant_id=tenant.id,
                        scope="s",
                        key=key,
                        request_hash="h",
                        created_at=now - age,
                    )
                    for key, age in (("stale", timedelta(hours=25)), ("fresh", timedelta(hours=1)))
                ]
            )
            session.add_all(
                [
                    TrainingQuotaCharge(tenant_id=tenant.id, started_at=now - age)
                    for age in (timedelta(hours=49), timedelta(hours=25))
                ]
            )
        purged = await housekeeping(services)
        assert purged == {
            "purged_jobs": 1,
            "purged_idempotency_keys": 1,
            "purged_quota_charges": 1,
        }
        async with session_scope(services.sessionmaker) as session:
            kinds = {job.kind for job in (await session.exec(select(Job))).all()}
            keys = {row.key for row in (await session.exec(select(IdempotencyKey))).all()}
            charges = (await session.exec(select(TrainingQuotaCharge))).all()
        assert kinds == {"x.recent", "x.pending"}
        assert keys == {"fresh"}
        # Two days are kept: the rolling 24-hour window never needs more.
        assert [c.started_at for c in charges] == [now - timedelta(hours=25)]


def test_webhook_tokens_compare_safely() -> None:
    settings = make_settings()
    training_id = uuid.uuid4()
    token = webhook_token(settings, training_id)
    assert token_matches(settings, training_id, token)
    assert not token_matches(settings, uuid.uuid4(), token)
    # Anyone can aim fal's signed webhooks at our URL: odd tokens are a no, not a crash.
    assert not token_matches(settings, training_id, "é" * len(token))
    assert not token_matches(settings, training_id, "")
