"""Trainer strategies: which fal trainer serves a training type, and how to talk to it."""

from avatar_api.trainers.base import Preset, TrainerResult, TrainerStrategy, TrainingRequest
from avatar_api.trainers.strategies import get_strategy, strategy_for_endpoint

__all__ = [
    "Preset",
    "TrainerResult",
    "TrainerStrategy",
    "TrainingRequest",
    "get_strategy",
    "strategy_for_endpoint",
]
