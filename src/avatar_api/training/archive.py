"""The training archive: accepted photos in a zip with generated entry names.

Built on disk and uploaded as a file, so memory stays flat whatever the photo count; JPEGs
do not compress, so entries are stored, which keeps zipping at disk speed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from avatar_api.storage.base import ObjectStorage, StoredObject


def _zip(paths: Sequence[Path], archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for index, path in enumerate(paths, start=1):
            zf.write(path, arcname=f"photo_{index:03d}.jpg")


async def build_archive(
    storage: ObjectStorage, photo_keys: Sequence[str], archive_key: str
) -> StoredObject:
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="avatar-archive-"))
    try:
        paths = []
        for index, key in enumerate(photo_keys):
            path = work / f"{index}.jpg"
            await storage.download_to(key, path)
            paths.append(path)
        archive = work / "archive.zip"
        await asyncio.to_thread(_zip, paths, archive)
        return await storage.put_file(archive_key, archive, content_type="application/zip")
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
