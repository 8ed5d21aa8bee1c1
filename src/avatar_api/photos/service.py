"""Photo uploads: receive under caps, normalise off the event loop, check, store, record.

An upload runs in three phases so no database transaction stays open while bytes arrive
and images are decoded (on SQLite an open write transaction blocks every other writer):
a short read to check the avatar, the slow part with no transaction, then a short write
under the avatar's row lock that re-checks the count before inserting.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.auth.service import Principal
from avatar_api.avatars.service import get_avatar
from avatar_api.db import session_scope
from avatar_api.models import Avatar, AvatarStatus, Photo, TrainingType
from avatar_api.photos import repository
from avatar_api.photos.errors import AvatarNotDraft, PhotoLimitReached, PhotoNotFound
from avatar_api.photos.processing import (
    NEAR_DUPLICATE_DISTANCE,
    NormalisedPhoto,
    PhotoRejected,
    ProcessingLimits,
    normalise_photo,
    phash_distance,
)
from avatar_api.photos.schemas import (
    PhotoDetail,
    PhotoList,
    PhotoRead,
    PhotoRejection,
    PhotoUploadResult,
)
from avatar_api.photos.upload import (
    OUTPUT_BYTES_PER_PHOTO,
    DiskBudget,
    ReceivedFile,
    UploadLimits,
    receive_files,
)
from avatar_api.services import Services
from avatar_api.settings import FaceCheck, Settings
from avatar_api.storage_keys import photo_key
from avatar_api.trainers.service import photo_bounds

logger = logging.getLogger("avatar_api.photos")


def to_read(photo: Photo) -> PhotoRead:
    return PhotoRead(
        id=photo.id,
        avatar_id=photo.avatar_id,
        filename=photo.filename,
        content_type=photo.content_type,
        width=photo.width,
        height=photo.height,
        size_bytes=photo.size_bytes,
        sha256=photo.sha256,
        face_count=photo.face_count,
        face_box=photo.face_box,
        warnings=photo.warnings,
        created_at=photo.created_at,
    )


def _limits(settings: Settings) -> ProcessingLimits:
    return ProcessingLimits(
        max_pixels=settings.photo_max_pixels,
        max_side=settings.photo_max_side,
        min_side=settings.photo_min_side,
        jpeg_quality=settings.photo_jpeg_quality,
    )


@dataclass
class _Candidate:
    received: ReceivedFile
    output: Path
    photo: NormalisedPhoto
    warnings: list[str] = field(default_factory=list)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class _Known:
    sha256: str
    phash: str
    filename: str


def _face_problem(photo: NormalisedPhoto) -> tuple[str, str] | None:
    if photo.face_count is None or photo.face_count == 1:
        return None
    if photo.face_count == 0:
        return "no_face", "No face was found; upload a photo where the face is clearly visible."
    return (
        "multiple_faces",
        f"{photo.face_count} faces were found; upload photos of the person alone.",
    )


def _screen(
    candidates: list[_Candidate | PhotoRejection],
    *,
    known: list[_Known],
    room: int,
    face_check: FaceCheck,
) -> tuple[list[_Candidate], list[PhotoRejection]]:
    """Apply the per-avatar checks in upload order: duplicates, faces, the count cap."""
    accepted: list[_Candidate] = []
    rejected: list[PhotoRejection] = []
    for item in candidates:
        if isinstance(item, PhotoRejection):
            rejected.append(item)
            continue
        name, photo = item.received.filename, item.photo

        def reject(code: str, message: str, name: str = name) -> None:
            rejected.append(PhotoRejection(filename=name, code=code, message=message))

        same = next((k for k in known if k.sha256 == photo.sha256), None)
        if same is not None:
            reject(
                "duplicate", f"This photo is the same as '{same.filename}'; upload a different one."
            )
            continue
        near = next(
            (k for k in known if phash_distance(k.phash, photo.phash) <= NEAR_DUPLICATE_DISTANCE),
            None,
        )
        if near is not None:
            reject(
                "near_duplicate",
                f"This photo is almost identical to '{near.filename}'; varied photos train better.",
            )
            continue
        problem = _face_problem(photo)
        if problem is not None and face_check is FaceCheck.enforce:
            reject(*problem)
            continue
        if problem is not None:
            item.warnings.append(problem[0])
        if len(accepted) >= room:
            reject("photo_limit_reached", "The avatar already has the maximum number of photos.")
            continue
        accepted.append(item)
        known.append(_Known(sha256=photo.sha256, phash=photo.phash, filename=name))
    return accepted, rejected


async def _normalise_all(
    files: list[ReceivedFile],
    *,
    work_dir: Path,
    limits: ProcessingLimits,
    detect_faces: bool,
    semaphore: asyncio.Semaphore,
) -> list[_Candidate | PhotoRejection]:
    async def one(index: int, received: ReceivedFile) -> _Candidate | PhotoRejection:
        output = work_dir / f"normalised-{index}.jpg"
        async with semaphore:
            try:
                # CPU-heavy decode/resize/encode: never on the event loop.
                photo = await asyncio.to_thread(
                    normalise_photo, received.path, output, limits, detect_faces=detect_faces
                )
            except PhotoRejected as exc:
                return PhotoRejection(
                    filename=received.filename, code=exc.code, message=exc.message
                )
        return _Candidate(received=received, output=output, photo=photo)

    return list(await asyncio.gather(*(one(i, f) for i, f in enumerate(files))))


async def _load_draft(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID, for_update: bool = False
) -> Avatar:
    avatar = await get_avatar(
        session, principal=principal, avatar_id=avatar_id, for_update=for_update
    )
    if avatar.status is not AvatarStatus.draft:
        raise AvatarNotDraft(
            f"The avatar is '{avatar.status}'; photos can be added or removed only in 'draft'."
        )
    return avatar


async def upload_photos(
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    semaphore: asyncio.Semaphore,
    disk_budget: DiskBudget,
) -> PhotoUploadResult:
    settings = services.settings
    async with session_scope(services.sessionmaker) as session:
        avatar = await _load_draft(session, principal=principal, avatar_id=avatar_id)
        existing = await repository.list_for_avatar(
            session, tenant_id=principal.tenant_id, avatar_id=avatar_id
        )
    low, high = photo_bounds(avatar.training_type, settings)
    if len(existing) >= high:
        raise PhotoLimitReached(f"The avatar has {len(existing)} photos; the maximum is {high}.")

    detect_faces = (
        avatar.training_type is TrainingType.portrait
        and settings.photo_face_check is not FaceCheck.off
    )
    # Temp disk is charged against the process's budget as it is written (the body, then
    # an allowance per normalised photo); over budget, 503 and the caller retries.
    disk_budget.check_room(content_length, max_request_bytes=settings.upload_max_request_bytes)
    with disk_budget.account() as charge:
        work_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="avatar-upload-"))
        stored: list[str] = []
        try:
            files = await receive_files(
                content_type=content_type,
                content_length=content_length,
                stream=stream,
                tmp_dir=work_dir,
                limits=UploadLimits(
                    max_file_bytes=settings.upload_max_file_bytes,
                    max_request_bytes=settings.upload_max_request_bytes,
                    max_files=settings.upload_max_files,
                ),
                charge=charge,
            )
            charge(len(files) * OUTPUT_BYTES_PER_PHOTO)
            outcomes = await _normalise_all(
                files,
                work_dir=work_dir,
                limits=_limits(settings),
                detect_faces=detect_faces,
                semaphore=semaphore,
            )
            known = [_Known(p.sha256, p.phash, p.filename) for p in existing]
            accepted, rejected = _screen(
                outcomes,
                known=known,
                room=high - len(existing),
                face_check=settings.photo_face_check,
            )
            for candidate in accepted:
                key = photo_key(principal.tenant_id, avatar_id, candidate.id)
                await services.storage.put_file(key, candidate.output, content_type="image/jpeg")
                stored.append(key)

            async with session_scope(services.sessionmaker) as session:
                await _load_draft(
                    session, principal=principal, avatar_id=avatar_id, for_update=True
                )
                # Re-count under the row lock: a concurrent upload may have added photos meanwhile.
                count = await repository.count_for_avatar(session, avatar_id=avatar_id)
                room = max(high - count, 0)
                for late in accepted[room:]:
                    rejected.append(
                        PhotoRejection(
                            filename=late.received.filename,
                            code="photo_limit_reached",
                            message="The avatar reached the maximum number of photos meanwhile.",
                        )
                    )
                accepted = accepted[:room]
                rows = [
                    Photo(
                        id=c.id,
                        tenant_id=principal.tenant_id,
                        avatar_id=avatar_id,
                        filename=c.received.filename,
                        storage_key=photo_key(principal.tenant_id, avatar_id, c.id),
                        source_format=c.photo.source_format,
                        width=c.photo.width,
                        height=c.photo.height,
                        size_bytes=c.photo.size_bytes,
                        sha256=c.photo.sha256,
                        phash=c.photo.phash,
                        face_count=c.photo.face_count,
                        face_box=list(c.photo.face_box) if c.photo.face_box else None,
                        face_score=c.photo.face_score,
                        warnings=c.warnings,
                    )
                    for c in accepted
                ]
                session.add_all(rows)
                await session.flush()
                total = count + len(rows)
            kept = {row.storage_key for row in rows}
            await _delete_quietly(services, [key for key in stored if key not in kept])
        except BaseException:
            await _delete_quietly(services, stored)
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work_dir, True)

    logger.info(
        "photos.uploaded",
        extra={
            "tenant_id": str(principal.tenant_id),
            "avatar_id": str(avatar_id),
            "accepted": len(rows),
            "rejected": len(rejected),
            "rejection_codes": sorted({r.code for r in rejected}),
        },
    )
    return PhotoUploadResult(
        accepted=[to_read(row) for row in rows],
        rejected=rejected,
        photo_count=total,
        min_photos=low,
        max_photos=high,
        ready_for_training=low <= total <= high,
    )


async def _delete_quietly(services: Services, keys: list[str]) -> None:
    for key in keys:
        try:
            await services.storage.delete(key)
        except Exception:
            logger.exception("photos.cleanup_failed", extra={"key": key})


async def list_photos(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID, settings: Settings
) -> PhotoList:
    avatar = await get_avatar(session, principal=principal, avatar_id=avatar_id)
    photos = await repository.list_for_avatar(
        session, tenant_id=principal.tenant_id, avatar_id=avatar_id
    )
    low, high = photo_bounds(avatar.training_type, settings)
    return PhotoList(
        items=[to_read(p) for p in photos],
        photo_count=len(photos),
        min_photos=low,
        max_photos=high,
        ready_for_training=low <= len(photos) <= high,
    )


async def _get_photo(
    session: AsyncSession, *, principal: Principal, avatar_id: uuid.UUID, photo_id: uuid.UUID
) -> Photo:
    await get_avatar(session, principal=principal, avatar_id=avatar_id)
    photo = await repository.get(
        session, tenant_id=principal.tenant_id, avatar_id=avatar_id, photo_id=photo_id
    )
    if photo is None:
        raise PhotoNotFound(f"No photo with id {photo_id} on this avatar.")
    return photo


async def get_photo(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    photo_id: uuid.UUID,
) -> PhotoDetail:
    photo = await _get_photo(session, principal=principal, avatar_id=avatar_id, photo_id=photo_id)
    ttl = services.settings.download_url_ttl_seconds
    url = await services.storage.download_url(
        photo.storage_key, expires_in=ttl, filename=f"{photo.id}.jpg"
    )
    return PhotoDetail(
        **to_read(photo).model_dump(),
        download_url=url,
        download_url_expires_at=services.clock() + timedelta(seconds=ttl),
    )


async def delete_photo(
    session: AsyncSession,
    *,
    services: Services,
    principal: Principal,
    avatar_id: uuid.UUID,
    photo_id: uuid.UUID,
) -> None:
    await _load_draft(session, principal=principal, avatar_id=avatar_id, for_update=True)
    photo = await _get_photo(session, principal=principal, avatar_id=avatar_id, photo_id=photo_id)
    await session.delete(photo)
    await session.flush()
    # Deleted from storage before the row's deletion commits: if this fails the request
    # fails and the photo is still listed, so the caller can retry.
    await services.storage.delete(photo.storage_key)
