"""Per-tenant training quotas, checked before a training is queued (so before fal sees it).

- ``AVATAR_QUOTA_CONCURRENT_TRAININGS``: trainings queued or running at once.
- ``AVATAR_QUOTA_TRAININGS_PER_DAY``: trainings started in any rolling 24 hours, whatever
  became of them (a failed training still cost a submission).

Either set to 0 disables that quota.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.errors import AppError
from avatar_api.models import Tenant, Training, TrainingStatus
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
        recent = await _count(session, mine, col(Training.created_at) > since)
        if recent >= daily:
            # The window frees a slot when the oldest training that keeps it full ages out.
            frees = (
                await session.exec(
                    select(Training.created_at)
                    .where(mine, col(Training.created_at) > since)
                    .order_by(col(Training.created_at))
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
