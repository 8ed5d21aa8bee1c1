from __future__ import annotations

from fastapi import APIRouter

from avatar_api.dependencies import PrincipalDep, SettingsDep
from avatar_api.errors import Unauthorized, problem_responses
from avatar_api.trainers.schemas import TrainingTypeList
from avatar_api.trainers.service import describe_training_types

router = APIRouter(prefix="/v1/training-types", tags=["training-types"])


@router.get(
    "",
    operation_id="list_training_types",
    responses=problem_responses(Unauthorized),
)
async def list_training_types(_: PrincipalDep, settings: SettingsDep) -> TrainingTypeList:
    """List the training types with their trainers, photo bounds and presets."""
    return describe_training_types(settings)
