from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from avatar_api.dependencies import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.models import WebhookDeliveryStatus
from avatar_api.pagination import CursorQuery, InvalidCursor, LimitQuery
from avatar_api.webhooks import service
from avatar_api.webhooks.errors import (
    WebhookEndpointDisabled,
    WebhookEndpointLimitReached,
    WebhookEndpointNotFound,
    WebhookUrlNotAllowed,
)
from avatar_api.webhooks.schemas import (
    WebhookDeliveryPage,
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
    WebhookEndpointRead,
)
from avatar_api.webhooks.ssrf import Resolver, system_resolver

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])


async def get_resolver() -> Resolver:
    """The DNS resolver of the SSRF check; tests override this dependency."""
    return system_resolver


ResolverDep = Annotated[Resolver, Depends(get_resolver)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    operation_id="create_webhook_endpoint",
    responses=problem_responses(Unauthorized, WebhookEndpointLimitReached, WebhookUrlNotAllowed),
)
async def create_webhook_endpoint(
    data: WebhookEndpointCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    resolver: ResolverDep,
) -> WebhookEndpointCreated:
    """Register a URL for events; the response shows its signing secret, this once only."""
    return await service.create_endpoint(
        session, principal=principal, data=data, settings=settings, resolver=resolver
    )


@router.get(
    "",
    operation_id="list_webhook_endpoints",
    responses=problem_responses(Unauthorized, InvalidCursor),
)
async def list_webhook_endpoints(
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> WebhookEndpointPage:
    """List your webhook endpoints, newest first, with cursor pagination."""
    return await service.list_endpoints(session, principal=principal, limit=limit, cursor=cursor)


@router.get(
    "/{endpoint_id}",
    operation_id="get_webhook_endpoint",
    responses=problem_responses(Unauthorized, WebhookEndpointNotFound),
)
async def get_webhook_endpoint(
    endpoint_id: uuid.UUID, principal: PrincipalDep, session: ReadSessionDep
) -> WebhookEndpointRead:
    """Get one webhook endpoint (without its secret)."""
    return service.to_read(
        await service.get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    )


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_webhook_endpoint",
    responses=problem_responses(Unauthorized, WebhookEndpointNotFound),
)
async def delete_webhook_endpoint(
    endpoint_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> Response:
    """Delete a webhook endpoint and its delivery log; queued deliveries are dropped."""
    await service.delete_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{endpoint_id}/deliveries",
    operation_id="list_webhook_deliveries",
    responses=problem_responses(Unauthorized, WebhookEndpointNotFound, InvalidCursor),
)
async def list_webhook_deliveries(
    endpoint_id: uuid.UUID,
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    status: WebhookDeliveryStatus | None = None,
) -> WebhookDeliveryPage:
    """List an endpoint's deliveries (the delivery log), newest first."""
    return await service.list_deliveries(
        session,
        principal=principal,
        endpoint_id=endpoint_id,
        limit=limit,
        cursor=cursor,
        status=status,
    )


@router.post(
    "/{endpoint_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="send_webhook_test",
    responses=problem_responses(Unauthorized, WebhookEndpointNotFound, WebhookEndpointDisabled),
)
async def send_webhook_test(
    endpoint_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> WebhookDeliveryRead:
    """Queue a `webhook.test` event to this endpoint; follow it in the delivery log."""
    return await service.send_test_event(session, principal=principal, endpoint_id=endpoint_id)
