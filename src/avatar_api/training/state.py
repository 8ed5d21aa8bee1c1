"""The training state machine, and the one function that moves a training and its avatar."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.avatars.state import set_status as set_avatar_status
from avatar_api.db import utcnow
from avatar_api.models import Avatar, AvatarStatus, Training, TrainingStatus
from avatar_api.training.errors import InvalidTrainingTransition

T = TrainingStatus

TRANSITIONS: dict[TrainingStatus, frozenset[TrainingStatus]] = {
    T.queued: frozenset({T.submitting, T.failed, T.cancelled}),
    # Back to queued only when fal certainly did not receive the request.
    T.submitting: frozenset(
        {T.queued, T.in_queue, T.in_progress, T.completed, T.failed, T.cancelled}
    ),
    T.in_queue: frozenset({T.in_progress, T.completed, T.failed, T.cancelled}),
    T.in_progress: frozenset({T.completed, T.failed, T.cancelled}),
    T.completed: frozenset(),
    T.failed: frozenset(),
    T.cancelled: frozenset(),
}
TERMINAL = frozenset({T.completed, T.failed, T.cancelled})
ACTIVE = frozenset(TRANSITIONS) - TERMINAL

_AVATAR_STATUS = {
    T.in_progress: AvatarStatus.training,
    T.completed: AvatarStatus.completed,
    T.failed: AvatarStatus.failed,
    T.cancelled: AvatarStatus.cancelled,
}


def can_transition(current: TrainingStatus, target: TrainingStatus) -> bool:
    return target in TRANSITIONS[current]


async def set_training_status(
    session: AsyncSession, training: Training, avatar: Avatar, target: TrainingStatus
) -> None:
    """Move ``training`` (and its avatar) to ``target``; the caller holds both row locks.

    A terminal status is never overwritten: late or duplicate news raises
    :class:`InvalidTrainingTransition`, which callers treat as "already handled".
    """
    if training.status is target:
        return
    if not can_transition(training.status, target):
        raise InvalidTrainingTransition(
            f"A training in status '{training.status}' cannot become '{target}'."
        )
    now = utcnow()
    training.status = target
    training.updated_at = now
    if target is T.in_progress and training.started_at is None:
        training.started_at = now
    if target in TERMINAL:
        training.completed_at = now
        training.queue_position = None
        from avatar_api.observability.metrics import observe_training_finished

        observe_training_finished(session, training, avatar)
    avatar_target = _AVATAR_STATUS.get(target)
    if avatar_target is not None and avatar.status is not avatar_target:
        set_avatar_status(avatar, avatar_target)
    session.add(training)
    session.add(avatar)
    await session.flush()
