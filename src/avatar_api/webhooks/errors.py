from __future__ import annotations

from avatar_api.errors import Conflict, NotFound, UnprocessableEntity


class WebhookEndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"
    title = "Webhook endpoint not found"


class WebhookUrlNotAllowed(UnprocessableEntity):
    code = "webhook_url_not_allowed"
    title = "The webhook URL is not an allowed target"


class WebhookEndpointLimitReached(Conflict):
    code = "webhook_endpoint_limit_reached"
    title = "The tenant has the maximum number of webhook endpoints"


class WebhookEndpointDisabled(Conflict):
    code = "webhook_endpoint_disabled"
    title = "The webhook endpoint is disabled"
