from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models import Avatar, AvatarStatus, Photo
from avatar_api.photos.upload import DiskBudget, UploadsBusy
from tests.conftest import make_settings
from tests.photos.fixtures import PhotoFixture
from tests.photos.portraits import portrait_jpegs

FileSpec = tuple[str, bytes]


async def new_avatar(client: httpx.AsyncClient, training_type: str = "portrait") -> str:
    response = await client.post("/v1/avatars", json={"name": "A", "training_type": training_type})
    assert response.status_code == 201
    avatar_id: str = response.json()["id"]
    return avatar_id


async def upload(
    client: httpx.AsyncClient, avatar_id: str, files: Sequence[FileSpec], **kwargs: Any
) -> httpx.Response:
    parts = [("files", (name, data, "image/jpeg")) for name, data in files]
    return await client.post(f"/v1/avatars/{avatar_id}/photos", files=parts, **kwargs)


def fixture_bytes(photo_set: Mapping[str, PhotoFixture], name: str) -> FileSpec:
    return (photo_set[name].path.name, photo_set[name].path.read_bytes())


def portraits(count: int, start: int = 0) -> list[FileSpec]:
    return [(f"p{i}.jpg", portrait_jpegs(24)[i]) for i in range(start, start + count)]


async def test_upload_accepts_and_reports_progress(client: httpx.AsyncClient) -> None:
    avatar_id = await new_avatar(client)
    response = await upload(client, avatar_id, portraits(10))
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["accepted"]) == 10
    assert body["rejected"] == []
    assert body["photo_count"] == 10
    assert (body["min_photos"], body["max_photos"]) == (10, 20)
    assert body["ready_for_training"] is True
    photo = body["accepted"][0]
    assert photo["content_type"] == "image/jpeg"
    assert photo["face_count"] == 1
    assert len(photo["face_box"]) == 4

    listed = (await client.get(f"/v1/avatars/{avatar_id}/photos")).json()
    assert [p["id"] for p in listed["items"]] == [p["id"] for p in body["accepted"]]


async def test_each_bad_file_is_rejected_with_a_reason(
    client: httpx.AsyncClient, photo_set: Mapping[str, PhotoFixture]
) -> None:
    avatar_id = await new_avatar(client)
    good = portraits(2)
    one_per_code = {f.expected.rejection: n for n, f in photo_set.items() if f.expected.rejection}
    files = [
        *good,
        ("copy.jpg", good[0][1]),
        *(fixture_bytes(photo_set, name) for name in one_per_code.values()),
        fixture_bytes(photo_set, "png_claims_20000"),
    ]
    response = await upload(client, avatar_id, files)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [p["filename"] for p in body["accepted"]] == ["p0.jpg", "p1.jpg"]
    codes = {r["code"] for r in body["rejected"]}
    assert codes == {"duplicate"} | {str(code) for code in one_per_code}
    assert len(body["rejected"]) == len(files) - 2
    for rejection in body["rejected"]:
        assert rejection["message"].endswith(".")
        assert len(rejection["message"]) > 20


async def test_face_rules_for_portraits(
    client: httpx.AsyncClient, photo_set: Mapping[str, PhotoFixture]
) -> None:
    no_face = next(n for n, f in photo_set.items() if f.expected.faces == 0)
    two_faces = next(n for n, f in photo_set.items() if f.expected.faces == 2)
    avatar_id = await new_avatar(client)
    response = await upload(
        client, avatar_id, [fixture_bytes(photo_set, no_face), fixture_bytes(photo_set, two_faces)]
    )
    codes = [r["code"] for r in response.json()["rejected"]]
    assert codes == ["no_face", "multiple_faces"]

    style_id = await new_avatar(client, "style")
    response = await upload(client, style_id, [fixture_bytes(photo_set, no_face)])
    assert len(response.json()["accepted"]) == 1
    assert response.json()["accepted"][0]["face_count"] is None


async def test_stored_photo_is_normalised_and_downloadable(
    client: httpx.AsyncClient, photo_set: Mapping[str, PhotoFixture]
) -> None:
    name = next(n for n, f in photo_set.items() if "EXIF rotate" in f.expected.note)
    avatar_id = await new_avatar(client)
    body = (await upload(client, avatar_id, [fixture_bytes(photo_set, name)])).json()
    photo_id = body["accepted"][0]["id"]
    detail = (await client.get(f"/v1/avatars/{avatar_id}/photos/{photo_id}")).json()
    assert detail["download_url"].startswith("http://127.0.0.1:8000/v1/files/")
    path = detail["download_url"].removeprefix("http://127.0.0.1:8000")
    downloaded = await client.get(path)
    assert downloaded.status_code == 200
    image = Image.open(io.BytesIO(downloaded.content))
    assert image.format == "JPEG"
    assert (image.width, image.height) == (detail["width"], detail["height"])
    assert image.height > image.width  # EXIF orientation applied
    assert not image.getexif()
    assert b"GPS" not in downloaded.content
    assert downloaded.content.count(b"Exif") == 0


async def test_count_bounds(client: httpx.AsyncClient, session: AsyncSession) -> None:
    avatar_id = await new_avatar(client)
    first = await upload(client, avatar_id, portraits(14))
    assert len(first.json()["accepted"]) == 14
    # 20 is the maximum: 6 more fit, the rest are refused one by one.
    more = portraits(8, start=14)
    second = (await upload(client, avatar_id, more)).json()
    assert second["photo_count"] == 20
    assert [r["code"] for r in second["rejected"]][-2:] == ["photo_limit_reached"] * 2
    full = await upload(client, avatar_id, portraits(1))
    assert full.status_code == 409
    assert full.json()["code"] == "photo_limit_reached"


async def test_caps_answer_413(client: httpx.AsyncClient, app: Any) -> None:
    avatar_id = await new_avatar(client)
    settings = app.state.settings
    big = [("big.jpg", os.urandom(settings.upload_max_file_bytes + 1))]
    response = await upload(client, avatar_id, big)
    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"

    many = [(f"f{i}.jpg", b"x") for i in range(settings.upload_max_files + 1)]
    response = await upload(client, avatar_id, many)
    assert response.status_code == 413
    assert response.json()["code"] == "too_many_files"

    response = await client.post(
        f"/v1/avatars/{avatar_id}/photos",
        content=b"x" * 10,
        headers={
            "content-type": "multipart/form-data; boundary=zzz",
            "content-length": str(10**12),
        },
    )
    assert response.status_code == 413
    assert (await client.get(f"/v1/avatars/{avatar_id}/photos")).json()["photo_count"] == 0


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{}", "application/json", 415, "unsupported_upload_media_type"),
        (b"--zzz\r\ngarbage", "multipart/form-data; boundary=zzz", 400, "invalid_multipart"),
        (
            b'--zzz\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--zzz--\r\n',
            "multipart/form-data; boundary=zzz",
            422,
            "no_files",
        ),
    ],
)
async def test_malformed_uploads(
    client: httpx.AsyncClient, content: bytes, content_type: str, status: int, code: str
) -> None:
    avatar_id = await new_avatar(client)
    response = await client.post(
        f"/v1/avatars/{avatar_id}/photos", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


async def test_hostile_filenames_are_display_text_only(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    avatar_id = await new_avatar(client)
    names = [b"../../etc/passwd.jpg", b"a\x00b.jpg", b"n" * 10_000 + b".jpg", b"..\\..\\win.jpg"]
    # Built by hand: HTTP clients escape what a hostile client would send raw.
    body_bytes = b"".join(
        b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="'
        + name
        + b'"\r\nContent-Type: image/jpeg\r\n\r\n'
        + data
        + b"\r\n"
        for name, data in zip(names, portrait_jpegs(24)[:4], strict=True)
    )
    response = await client.post(
        f"/v1/avatars/{avatar_id}/photos",
        content=body_bytes + b"--zzz--\r\n",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    stored = [p["filename"] for p in body["accepted"]]
    assert stored[0] == "passwd.jpg"
    assert stored[1] == "ab.jpg"
    assert len(stored[2]) <= 120
    assert stored[2].endswith(".jpg")
    assert stored[3] == "win.jpg"
    rows = (await session.exec(select(Photo).where(Photo.avatar_id == uuid.UUID(avatar_id)))).all()
    for row in rows:
        assert row.storage_key.endswith(f"/photos/{row.id}.jpg")
        assert ".." not in row.storage_key


async def test_delete_only_in_draft(client: httpx.AsyncClient, session: AsyncSession) -> None:
    avatar_id = await new_avatar(client)
    photo_ids = [
        p["id"] for p in (await upload(client, avatar_id, portraits(2))).json()["accepted"]
    ]
    assert (
        await client.delete(f"/v1/avatars/{avatar_id}/photos/{photo_ids[0]}")
    ).status_code == 204
    assert (await client.get(f"/v1/avatars/{avatar_id}/photos/{photo_ids[0]}")).status_code == 404

    avatar = await session.get(Avatar, uuid.UUID(avatar_id))
    assert avatar is not None
    avatar.status = AvatarStatus.queued
    session.add(avatar)
    await session.commit()
    refused = await client.delete(f"/v1/avatars/{avatar_id}/photos/{photo_ids[1]}")
    assert refused.status_code == 409
    assert refused.json()["code"] == "avatar_not_draft"
    added = await upload(client, avatar_id, portraits(1))
    assert added.status_code == 409


async def test_other_tenant_cannot_touch_photos(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    avatar_id = await new_avatar(client)
    photo_id = (await upload(client, avatar_id, portraits(1))).json()["accepted"][0]["id"]
    base = f"/v1/avatars/{avatar_id}/photos"
    for response in [
        await other_client.get(base),
        await other_client.get(f"{base}/{photo_id}"),
        await other_client.delete(f"{base}/{photo_id}"),
        await upload(other_client, avatar_id, portraits(1)),
    ]:
        assert response.status_code == 404
        assert response.json()["code"] == "avatar_not_found"
    assert (await client.get(base)).json()["photo_count"] == 1


async def test_uploads_beyond_the_temp_disk_budget_are_told_to_retry(
    client: httpx.AsyncClient, app: Any
) -> None:
    avatar_id = await new_avatar(client)
    budget = app.state.upload_disk_budget
    files = portraits(1)
    size = len(files[0][1])
    # Other uploads have written all but a few bytes of the budget.
    with budget.account() as others:
        others(budget.limit_bytes - size // 2)
        busy = await upload(client, avatar_id, files)  # its Content-Length cannot fit
        assert busy.status_code == 503
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["code"] == "uploads_busy"
        assert busy.headers["Retry-After"] == "5"
        assert budget.used_bytes == budget.limit_bytes - size // 2

        # Without a Content-Length (chunked), it is cut off once it outgrows the room.
        body, content_type = httpx_multipart(files)

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 16 * 1024):
                yield body[start : start + 16 * 1024]

        cut = await client.post(
            f"/v1/avatars/{avatar_id}/photos",
            content=chunked(),
            headers={"content-type": content_type},
        )
        assert cut.status_code == 503
        assert cut.json()["code"] == "uploads_busy"
        assert budget.used_bytes == budget.limit_bytes - size // 2  # its charge was freed
    assert budget.used_bytes == 0
    assert (await client.get(f"/v1/avatars/{avatar_id}/photos")).json()["photo_count"] == 0

    accepted = await upload(client, avatar_id, files)
    assert accepted.status_code == 201
    assert budget.used_bytes == 0  # freed after the request, as after a failed one
    bad = await client.post(
        f"/v1/avatars/{avatar_id}/photos",
        content=b"--zzz\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert bad.status_code == 400
    assert budget.used_bytes == 0


def httpx_multipart(files: Sequence[FileSpec]) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST",
        "http://test/",
        files=[("files", (name, data, "image/jpeg")) for name, data in files],
    )
    return request.read(), request.headers["content-type"]


def test_the_budget_charges_what_is_written_and_frees_it() -> None:
    budget = DiskBudget(10)
    budget.check_room(None, max_request_bytes=10)  # chunked: nothing to check up front
    budget.check_room("10", max_request_bytes=10)
    with budget.account() as one:
        one(6)
        with pytest.raises(UploadsBusy):
            budget.check_room("5", max_request_bytes=10)
        budget.check_room("11", max_request_bytes=10)  # too large anyway: a 413, not a 503
        with budget.account() as two:
            two(4)
            assert budget.used_bytes == 10
            with pytest.raises(UploadsBusy):
                two(1)
        assert budget.used_bytes == 6
    assert budget.used_bytes == 0
    with pytest.raises(ValueError, match="TEMP_BUDGET"):
        make_settings(
            upload_max_file_bytes=2048, upload_max_request_bytes=4096, upload_temp_budget_bytes=3072
        )
