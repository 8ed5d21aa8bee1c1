"""Webhook endpoint use cases. Services flush; the request's session dependency commits."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.db import utcnow
from avatar_api.models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from avatar_api.pagination import Cursor
from avatar_api.settings import Settings
from avatar_api.webhooks import repository
from avatar_api.webhooks.errors import (
    WebhookEndpointDisabled,
    WebhookEndpointLimitReached,
    WebhookEndpointNotFound,
    WebhookUrlNotAllowed,
)
from avatar_api.webhooks.events import (
    WebhookEventType,
    build_payload,
    new_event_id,
    queue_delivery,
)
from avatar_api.webhooks.schemas import (
    WebhookDeliveryPage,
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
    WebhookEndpointRead,
)
from avatar_api.webhooks.signing import encrypt_secret, generate_secret
from avatar_api.webhooks.ssrf import Resolver, UnsafeTarget, vet_url


def to_read(endpoint: WebhookEndpoint) -> WebhookEndpointRead:
    return WebhookEndpointRead(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.events,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def delivery_to_read(delivery: WebhookDelivery) -> WebhookDeliveryRead:
    return WebhookDeliveryRead(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        payload=delivery.payload,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


async def get_endpoint(
    session: AsyncSession, *, principal: Principal, endpoint_id: uuid.UUID, for_update: bool = False
) -> WebhookEndpoint:
    """The caller's endpoint; another tenant's id is indistinguishable from a missing one."""
    endpoint = await repository.get_endpoint(
        session, tenant_id=principal.tenant_id, endpoint_id=endpoint_id, for_update=for_update
    )
    if endpoint is None:
        raise WebhookEndpointNotFound(f"No webhook endpoint with id {endpoint_id}.")
    return endpoint


async def create_endpoint(
    session: AsyncSession,
    *,
    principal: Principal,
    data: WebhookEndpointCreate,
    settings: Settings,
    resolver: Resolver,
) -> WebhookEndpointCreated:
    """Register an endpoint after the SSRF check; the result carries the secret, once.

    The URL is checked again before every delivery (DNS can change after registration).
    """
    # Resolve before touching the database: no transaction is held while DNS answers.
    try:
        await vet_url(
            data.url, resolver=resolver, allow_private=settings.webhook_allow_private_targets
        )
    except UnsafeTarget as exc:
        raise WebhookUrlNotAllowed(str(exc)) from exc
    await repository.lock_tenant(session, tenant_id=principal.tenant_id)
    limit = settings.webhook_max_endpoints_per_tenant
    if await repository.count_endpoints(session, tenant_id=principal.tenant_id) >= limit:
        raise WebhookEndpointLimitReached(
            f"A tenant may register {limit} webhook endpoints; delete one first."
        )
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        tenant_id=principal.tenant_id,
        url=data.url,
        events=[event.value for event in dict.fromkeys(data.events)],
        encrypted_secret=encrypt_secret(secret, key=settings.secret_key),
    )
    session.add(endpoint)
    await session.flush()
    return WebhookEndpointCreated(**to_read(endpoint).model_dump(), secret=secret)


async def list_endpoints(
    session: AsyncSession, *, principal: Principal, limit: int, cursor: str | None
) -> WebhookEndpointPage:
    rows = await repository.list_endpoints_page(
        session,
        tenant_id=principal.tenant_id,
        limit=limit,
        after=Cursor.decode(cursor) if cursor else None,
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = Cursor(created_at=page[-1].created_at, id=page[-1].id).encode() if more else None
    return WebhookEndpointPage(items=[to_read(e) for e in page], next_cursor=next_cursor)


async def delete_endpoint(
    session: AsyncSession, *, principal: Principal, endpoint_id: uuid.UUID
) -> None:
    """Delete an endpoint and its delivery log; its queued jobs then find nothing to send."""
    endpoint = await get_endpoint(
        session, principal=principal, endpoint_id=endpoint_id, for_update=True
    )
    await session.delete(endpoint)
    await session.flush()


async def list_deliveries(
    session: AsyncSession,
    *,
    principal: Principal,
    endpoint_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    status: WebhookDeliveryStatus | None = None,
) -> WebhookDeliveryPage:
    await get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    rows = await repository.list_deliveries_page(
        session,
        tenant_id=principal.tenant_id,
        endpoint_id=endpoint_id,
        limit=limit,
        after=Cursor.decode(cursor) if cursor else None,
        status=status,
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = Cursor(created_at=page[-1].created_at, id=page[-1].id).encode() if more else None
    return WebhookDeliveryPage(items=[delivery_to_read(d) for d in page], next_cursor=next_cursor)


async def send_test_event(
    session: AsyncSession, *, principal: Principal, endpoint_id: uuid.UUID
) -> WebhookDeliveryRead:
    """Queue a ``webhook.test`` event to this endpoint only, subscribed to it or not."""
    endpoint = await get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    if not endpoint.enabled:
        raise WebhookEndpointDisabled(
            f"The endpoint is disabled ({endpoint.disabled_reason}); register it again."
        )
    now = utcnow()
    event_type = WebhookEventType.webhook_test
    delivery = await queue_delivery(
        session,
        endpoint=endpoint,
        event_id=new_event_id(),
        event_type=event_type,
        payload=build_payload(
            event_type, {"endpoint_id": endpoint.id, "message": "Test event"}, now=now
        ),
        now=now,
    )
    return delivery_to_read(delivery)
