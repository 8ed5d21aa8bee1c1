from __future__ import annotations

from avatar_api.errors import Conflict, NotFound, UnprocessableEntity


class TrainingNotFound(NotFound):
    code = "training_not_found"
    title = "Training not found"


class TrainingNotAllowed(Conflict):
    code = "training_not_allowed"
    title = "The avatar cannot start a training in its current status"


class NotEnoughPhotos(UnprocessableEntity):
    code = "not_enough_photos"
    title = "Not enough photos to train"


class TooManyPhotos(UnprocessableEntity):
    code = "too_many_photos"
    title = "Too many photos to train"


class TrainingNotCancellable(Conflict):
    code = "training_not_cancellable"
    title = "The training has already ended"


class InvalidTrainingTransition(Conflict):
    code = "invalid_training_transition"
    title = "The training cannot move to that status"
