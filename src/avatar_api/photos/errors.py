from __future__ import annotations

from avatar_api.errors import Conflict, NotFound


class PhotoNotFound(NotFound):
    code = "photo_not_found"
    title = "Photo not found"


class AvatarNotDraft(Conflict):
    code = "avatar_not_draft"
    title = "Photos can only change while the avatar is a draft"


class PhotoLimitReached(Conflict):
    code = "photo_limit_reached"
    title = "The avatar has the maximum number of photos"
