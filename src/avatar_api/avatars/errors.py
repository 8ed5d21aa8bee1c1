from __future__ import annotations

from avatar_api.errors import Conflict, NotFound, UnprocessableEntity


class AvatarNotFound(NotFound):
    code = "avatar_not_found"
    title = "Avatar not found"


class InvalidAvatarTransition(Conflict):
    code = "invalid_avatar_transition"
    title = "The avatar cannot move to that status"


class AvatarNotEditable(Conflict):
    code = "avatar_not_editable"
    title = "The avatar cannot be changed in its current status"


class MetadataTooLarge(UnprocessableEntity):
    code = "metadata_too_large"
    title = "Metadata too large"
