"""Every table, imported in one place so Alembic and create_all see them all."""

from avatar_api.models.avatar import Avatar, AvatarStatus, Gender, TrainingType
from avatar_api.models.generation import Generation, GenerationStatus, GenerationWebhookEvent
from avatar_api.models.job import Job, JobStatus
from avatar_api.models.operations import RateLimitWindow, TrainingQuotaCharge
from avatar_api.models.photo import Photo
from avatar_api.models.tenant import ApiKey, Tenant
from avatar_api.models.training import (
    FalWebhookEvent,
    IdempotencyKey,
    SimulatedRequest,
    Training,
    TrainingStatus,
)
from avatar_api.models.webhook import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint

__all__ = [
    "ApiKey",
    "Avatar",
    "AvatarStatus",
    "FalWebhookEvent",
    "Gender",
    "Generation",
    "GenerationStatus",
    "GenerationWebhookEvent",
    "IdempotencyKey",
    "Job",
    "JobStatus",
    "Photo",
    "RateLimitWindow",
    "SimulatedRequest",
    "Tenant",
    "Training",
    "TrainingQuotaCharge",
    "TrainingStatus",
    "TrainingType",
    "WebhookDelivery",
    "WebhookDeliveryStatus",
    "WebhookEndpoint",
]
