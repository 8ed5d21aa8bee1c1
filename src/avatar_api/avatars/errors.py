from __future__ import annotations

from typing import Any

from avatar_api.errors import Conflict, NotFound, ServiceUnavailable, UnprocessableEntity


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


class UserErasureIncomplete(ServiceUnavailable):
    """Some of a user's avatars were erased, then one failed; the problem lists the erased."""

    code = "user_erasure_incomplete"
    title = "The user's erasure stopped part-way"

    def __init__(self, detail: str, *, erased: list[dict[str, Any]]) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})
        self.erased = erased

    def extra(self) -> dict[str, Any]:
        return {"erased": self.erased}
