"""Every table, imported in one place so Alembic and create_all see them all."""

from avatar_api.models.avatar import Avatar, AvatarStatus, Gender, TrainingType
from avatar_api.models.job import Job, JobStatus
from avatar_api.models.photo import Photo
from avatar_api.models.tenant import ApiKey, Tenant

__all__ = [
    "ApiKey",
    "Avatar",
    "AvatarStatus",
    "Gender",
    "Job",
    "JobStatus",
    "Photo",
    "Tenant",
    "TrainingType",
]
