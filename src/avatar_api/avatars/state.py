"""The avatar state machine: the one table of allowed transitions, and the one setter."""

from __future__ import annotations

from avatar_api.avatars.errors import InvalidAvatarTransition
from avatar_api.db import utcnow
from avatar_api.models import Avatar, AvatarStatus

S = AvatarStatus

TRANSITIONS: dict[AvatarStatus, frozenset[AvatarStatus]] = {
    S.draft: frozenset({S.queued}),
    S.queued: frozenset({S.training, S.completed, S.failed, S.cancelled}),
    S.training: frozenset({S.completed, S.failed, S.cancelled}),
    S.completed: frozenset(),
    # A failed or cancelled avatar may be trained again.
    S.failed: frozenset({S.queued}),
    S.cancelled: frozenset({S.queued}),
}

TERMINAL: frozenset[AvatarStatus] = frozenset({S.completed, S.failed, S.cancelled})
# While a training is queued or running, what it was started with must not change.
EDITABLE: frozenset[AvatarStatus] = frozenset({S.draft, S.completed, S.failed, S.cancelled})


def can_transition(current: AvatarStatus, target: AvatarStatus) -> bool:
    return target in TRANSITIONS[current]


def set_status(avatar: Avatar, target: AvatarStatus) -> None:
    """Move ``avatar`` to ``target`` or raise :class:`InvalidAvatarTransition`.

    Callers hold the row lock (``SELECT ... FOR UPDATE``) before calling, so two
    concurrent transitions cannot both pass this check.
    """
    if not can_transition(avatar.status, target):
        raise InvalidAvatarTransition(
            f"An avatar in status '{avatar.status}' cannot become '{target}'."
        )
    avatar.status = target
    avatar.updated_at = utcnow()
