from __future__ import annotations

from avatar_api.errors import Conflict, NotFound
from avatar_api.trainers.base import InvalidGenerationInput


class GenerationNotFound(NotFound):
    code = "generation_not_found"
    title = "Generation not found"


class AvatarNotTrained(Conflict):
    code = "avatar_not_trained"
    title = "The avatar has no completed training to generate with"


class GenerationNotCancellable(Conflict):
    code = "generation_not_cancellable"
    title = "The generation is not queued or running"


class InvalidGenerationTransition(Conflict):
    code = "invalid_generation_transition"
    title = "The generation cannot move to that status"


__all__ = [
    "AvatarNotTrained",
    "GenerationNotCancellable",
    "GenerationNotFound",
    "InvalidGenerationInput",
    "InvalidGenerationTransition",
]
