"""Webhook endpoint and delivery queries; the API's are scoped to a tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Tenant, WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from avatar_api.pagination import Cursor


async def lock_tenant(session: AsyncSession, *, tenant_id: uuid.UUID) -> None:
    """Serialise a tenant's endpoint creations, so two at once cannot both pass the cap."""
    await session.exec(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


async def get_endpoint(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    for_update: bool = False,
) -> WebhookEndpoint | None:
    stmt = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.exec(stmt)).first()


async def count_endpoints(session: AsyncSession, *, tenant_id: uuid.UUID) -> int:
    stmt = select(func.count()).where(col(WebhookEndpoint.tenant_id) == tenant_id)
    return int((await session.exec(stmt)).one())


async def enabled_endpoints(
    session: AsyncSession, *, tenant_id: uuid.UUID
) -> list[WebhookEndpoint]:
    # Subscriptions are filtered by the caller: a tenant has few endpoints (capped), and a
    # JSON-contains query would differ between SQLite and PostgreSQL.
    stmt = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, col(WebhookEndpoint.enabled).is_(True))
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    return list((await session.exec(stmt)).all())


async def list_endpoints_page(
    session: AsyncSession, *, tenant_id: uuid.UUID, limit: int, after: Cursor | None
) -> list[WebhookEndpoint]:
    """Up to ``limit + 1`` endpoints, newest first, so the caller can tell if more exist."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                col(WebhookEndpoint.created_at) < after.created_at,
                and_(
                    col(WebhookEndpoint.created_at) == after.created_at,
                    col(WebhookEndpoint.id) < after.id,
                ),
            )
        )
    stmt = stmt.order_by(
        col(WebhookEndpoint.created_at).desc(), col(WebhookEndpoint.id).desc()
    ).limit(limit + 1)
    return list((await session.exec(stmt)).all())


async def list_deliveries_page(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    limit: int,
    after: Cursor | None,
    status: WebhookDeliveryStatus | None,
) -> list[WebhookDelivery]:
    """Up to ``limit + 1`` deliveries of one endpoint, newest first."""
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if after is not None:
        stmt = stmt.where(
            or_(
                col(WebhookDelivery.created_at) < after.created_at,
                and_(
                    col(WebhookDelivery.created_at) == after.created_at,
                    col(WebhookDelivery.id) < after.id,
                ),
            )
        )
    stmt = stmt.order_by(
        col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc()
    ).limit(limit + 1)
    return list((await session.exec(stmt)).all())


async def get_delivery(session: AsyncSession, *, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    """A delivery by id, for the job that sends it (jobs are not tenant requests)."""
    return await session.get(WebhookDelivery, delivery_id)


async def update_pending_delivery(
    session: AsyncSession, *, delivery_id: uuid.UUID, **values: Any
) -> bool:
    """Update a delivery that is still pending; ``False`` when it is not (or is gone).

    Guarded on ``pending`` so a terminal status is never overwritten, e.g. by a late
    attempt of a job that another worker already finished.
    """
    result = await session.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == WebhookDeliveryStatus.pending,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def disable_endpoint(
    session: AsyncSession, *, endpoint_id: uuid.UUID, reason: str, now: datetime
) -> None:
    await session.exec(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id)
        .values(enabled=False, disabled_reason=reason, updated_at=now)
        .execution_options(synchronize_session=False)
    )
