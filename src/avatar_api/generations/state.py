"""The generation state machine, and the one function that moves a generation."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db import utcnow
from avatar_api.generations.errors import InvalidGenerationTransition
from avatar_api.models import Generation, GenerationStatus

G = GenerationStatus

TRANSITIONS: dict[GenerationStatus, frozenset[GenerationStatus]] = {
    G.queued: frozenset({G.submitting, G.failed, G.cancelled}),
    # Back to queued only when fal certainly did not receive the request.
    G.submitting: frozenset(
        {G.queued, G.in_queue, G.in_progress, G.completed, G.failed, G.cancelled}
    ),
    G.in_queue: frozenset({G.in_progress, G.completed, G.failed, G.cancelled}),
    G.in_progress: frozenset({G.completed, G.failed, G.cancelled}),
    G.completed: frozenset(),
    G.failed: frozenset(),
    G.cancelled: frozenset(),
}
TERMINAL = frozenset({G.completed, G.failed, G.cancelled})
ACTIVE = frozenset(TRANSITIONS) - TERMINAL


def can_transition(current: GenerationStatus, target: GenerationStatus) -> bool:
    return target in TRANSITIONS[current]


async def set_generation_status(
    session: AsyncSession, generation: Generation, target: GenerationStatus
) -> None:
    """Move ``generation`` to ``target``; the caller holds its row lock.

    A terminal status is never overwritten: late or duplicate news raises
    :class:`InvalidGenerationTransition`; callers check :data:`TERMINAL` first.
    """
    if generation.status is target:
        return
    if not can_transition(generation.status, target):
        raise InvalidGenerationTransition(
            f"A generation in status '{generation.status}' cannot become '{target}'."
        )
    now = utcnow()
    generation.status = target
    generation.updated_at = now
    if target in TERMINAL:
        generation.completed_at = now
    session.add(generation)
    await session.flush()
