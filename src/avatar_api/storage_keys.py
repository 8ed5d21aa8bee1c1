"""Where things live in object storage: every key is generated, never taken from a caller.

Everything of one avatar sits under one prefix, so erasing an avatar is one prefix delete.
"""

from __future__ import annotations

import uuid


def avatar_prefix(tenant_id: uuid.UUID, avatar_id: uuid.UUID) -> str:
    return f"tenants/{tenant_id}/avatars/{avatar_id}/"


def photo_key(tenant_id: uuid.UUID, avatar_id: uuid.UUID, photo_id: uuid.UUID) -> str:
    return f"{avatar_prefix(tenant_id, avatar_id)}photos/{photo_id}.jpg"


def archive_key(tenant_id: uuid.UUID, avatar_id: uuid.UUID, training_id: uuid.UUID) -> str:
    return f"{avatar_prefix(tenant_id, avatar_id)}archives/{training_id}.zip"


def result_key(
    tenant_id: uuid.UUID, avatar_id: uuid.UUID, training_id: uuid.UUID, name: str
) -> str:
    return f"{avatar_prefix(tenant_id, avatar_id)}results/{training_id}/{name}"


def generation_image_key(
    tenant_id: uuid.UUID, avatar_id: uuid.UUID, generation_id: uuid.UUID, index: int, ext: str
) -> str:
    return f"{avatar_prefix(tenant_id, avatar_id)}generations/{generation_id}/{index}.{ext}"
