"""Dependencies giving routes the configured storage adapter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from avatar_api.storage.base import ObjectStorage


async def get_storage(request: Request) -> ObjectStorage:
    storage: ObjectStorage = request.app.state.storage
    return storage


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]
