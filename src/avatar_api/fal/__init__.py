"""The fal.ai edge: the trainer gateway port, its fal-client adapter, webhook signatures."""

from avatar_api.fal.gateway import (
    CancelOutcome,
    FalCredentialsMissing,
    FalError,
    FalPermanentError,
    FalRetriableError,
    FalState,
    FalStatus,
    FalSubmitAmbiguous,
    Submission,
    TrainerGateway,
)

__all__ = [
    "CancelOutcome",
    "FalCredentialsMissing",
    "FalError",
    "FalPermanentError",
    "FalRetriableError",
    "FalState",
    "FalStatus",
    "FalSubmitAmbiguous",
    "Submission",
    "TrainerGateway",
]
