from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from avatar_api.avatars.errors import AvatarNotFound
from avatar_api.dependencies import PrincipalDep, ReadSessionDep, ServicesDep, SessionDep
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.photos import service
from avatar_api.photos.errors import AvatarNotDraft, PhotoLimitReached, PhotoNotFound
from avatar_api.photos.schemas import PhotoDetail, PhotoList, PhotoUploadResult
from avatar_api.photos.upload import (
    InvalidMultipart,
    NoFiles,
    TooManyFiles,
    UnsupportedUploadMediaType,
    UploadsBusy,
    UploadTooLarge,
)

router = APIRouter(prefix="/v1/avatars/{avatar_id}/photos", tags=["photos"])

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "PhotoUpload",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more photos: JPEG, PNG, WebP or HEIC.",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    operation_id="upload_photos",
    openapi_extra=_MULTIPART_BODY,
    responses=problem_responses(
        InvalidMultipart,
        Unauthorized,
        AvatarNotFound,
        AvatarNotDraft,
        PhotoLimitReached,
        UploadTooLarge,
        TooManyFiles,
        UnsupportedUploadMediaType,
        NoFiles,
        UploadsBusy,
    ),
)
async def upload_photos(
    avatar_id: uuid.UUID, request: Request, principal: PrincipalDep, services: ServicesDep
) -> PhotoUploadResult:
    """Upload photos (multipart field `files`); each is accepted or rejected with a reason."""
    return await service.upload_photos(
        services=services,
        principal=principal,
        avatar_id=avatar_id,
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        stream=request.stream(),
        semaphore=request.app.state.upload_semaphore,
        disk_budget=request.app.state.upload_disk_budget,
    )


@router.get(
    "",
    operation_id="list_photos",
    responses=problem_responses(Unauthorized, AvatarNotFound),
)
async def list_photos(
    avatar_id: uuid.UUID, principal: PrincipalDep, session: ReadSessionDep, services: ServicesDep
) -> PhotoList:
    """List an avatar's accepted photos, oldest first, with the training bounds."""
    return await service.list_photos(
        session, principal=principal, avatar_id=avatar_id, settings=services.settings
    )


@router.get(
    "/{photo_id}",
    operation_id="get_photo",
    responses=problem_responses(Unauthorized, AvatarNotFound, PhotoNotFound),
)
async def get_photo(
    avatar_id: uuid.UUID,
    photo_id: uuid.UUID,
    principal: PrincipalDep,
    session: ReadSessionDep,
    services: ServicesDep,
) -> PhotoDetail:
    """Get one photo with a short-lived download URL of the stored JPEG."""
    return await service.get_photo(
        session, services=services, principal=principal, avatar_id=avatar_id, photo_id=photo_id
    )


@router.delete(
    "/{photo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_photo",
    responses=problem_responses(Unauthorized, AvatarNotFound, PhotoNotFound, AvatarNotDraft),
)
async def delete_photo(
    avatar_id: uuid.UUID,
    photo_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    services: ServicesDep,
) -> Response:
    """Delete a photo (only while the avatar is a draft)."""
    await service.delete_photo(
        session, services=services, principal=principal, avatar_id=avatar_id, photo_id=photo_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
