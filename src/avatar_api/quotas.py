"""Per-tenant training quotas, checked before a training is queued (so before fal sees it).

- ``AVATAR_QUOTA_CONCURRENT_TRAININGS``: trainings queued or running at once.
- ``AVATAR_QUOTA_TRAININGS_PER_DAY``: trainings started in any rolling 24 hours, whatever
  became of them (a failed training still cost a submission) and of their avatars: each
  start is charged in ``training_quota_charges``, which erasing an avatar leaves alone.

Either set to 0 disables that quota.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.errors import AppError
from avatar_api.models import Tenant, Training, TrainingQuotaCharge, TrainingStatus
from avatar_api.observability.metrics import QUOTA_REJECTIONS
from avatar_api.settings import Settings

# Statuses that hold a slot of the concurrency quota: everything before a terminal status.
QUOTA_ACTIVE_STATUSES = (
    TrainingStatus.queued,
    TrainingStatus.submitting,
    TrainingStatus.in_queue,
    TrainingStatus.in_progress,
)
DAY = timedelta(hours=24)
# Charges older than this are purged by housekeeping (they left the window long ago).
CHARGES_KEPT = 2 * DAY


class QuotaExceeded(AppError):
    status_code = 429
    code = "quota_exceeded"
    title = "Quota exceeded"


class ConcurrentTrainingsQuotaExceeded(QuotaExceeded):
    code = "quota_concurrent_trainings"
    title = "Too many trainings running"


class DailyTrainingsQuotaExceeded(QuotaExceeded):
    code = "quota_daily_trainings"
    title = "Daily training quota reached"


async def check_training_quotas(
    session: AsyncSession,
    *,
    settings: Settings,
    tenant_id: uuid.UUID,
    now: datetime | None = None,
) -> None:
    """Raise a 429 problem when ``tenant_id`` may not start another training now.

    Takes the tenant's row lock first: two starts for different avatars of one tenant
    would otherwise both count the same trainings and both pass. The lock is held to the
    end of the caller's transaction, which is when the new training becomes visible.
    """
    concurrent, daily = settings.quota_concurrent_trainings, settings.quota_trainings_per_day
    if not concurrent and not daily:
        return
    now = now or utcnow()
    await session.exec(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    mine = col(Training.tenant_id) == tenant_id

    if concurrent:
        active = await _count(session, mine, col(Training.status).in_(QUOTA_ACTIVE_STATUSES))
        if active >= concurrent:
            QUOTA_REJECTIONS.labels(quota="concurrent_trainings").inc()
            raise ConcurrentTrainingsQuotaExceeded(
                f"{active} of your trainings are queued or running and your quota is "
                f"{concurrent} at a time: wait for one to finish, or cancel one."
            )

    if daily:
        since = now - DAY
        charged = col(TrainingQuotaCharge.tenant_id) == tenant_id
        in_window = col(TrainingQuotaCharge.started_at) > since
        recent = int(
            (
                await session.exec(
                    select(func.count()).select_from(TrainingQuotaCharge).where(charged, in_window)
                )
            ).one()
        )
        if recent >= daily:
            # The window frees a slot when the oldest start that keeps it full ages out.
            frees = (
                await session.exec(
                    select(TrainingQuotaCharge.started_at)
                    .where(charged, in_window)
                    .order_by(col(TrainingQuotaCharge.started_at))
                    .offset(recent - daily)
                    .limit(1)
                )
            ).first()
            retry_after = max(1, math.ceil(((frees or now) + DAY - now).total_seconds()))
            QUOTA_REJECTIONS.labels(quota="daily_trainings").inc()
            raise DailyTrainingsQuotaExceeded(
                f"You started {recent} trainings in the last 24 hours and your quota is "
                f"{daily}; the next one can start in {_human(retry_after)}.",
                headers={"Retry-After": str(retry_after)},
            )


def charge_training_start(
    session: AsyncSession, *, tenant_id: uuid.UUID, now: datetime | None = None
) -> None:
    """Count a training start against the tenant's daily quota (in the caller's transaction)."""
    session.add(TrainingQuotaCharge(tenant_id=tenant_id, started_at=now or utcnow()))


async def purge_old_charges(session: AsyncSession, *, now: datetime) -> int:
    result = await session.exec(
        delete(TrainingQuotaCharge).where(col(TrainingQuotaCharge.started_at) < now - CHARGES_KEPT)
    )
    return int(result.rowcount or 0)


async def _count(session: AsyncSession, *conditions: object) -> int:
    result = await session.exec(
        select(func.count()).select_from(Training).where(*conditions)  # type: ignore[arg-type]
    )
    return int(result.one())


def _human(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
