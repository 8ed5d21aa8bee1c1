from __future__ import annotations

from fastapi import APIRouter, Request

from avatar_api.fal.simulator import JWKS_PATH, simulator_signer

# Mounted in test mode only, and left out of the OpenAPI document (it is not API surface).
router = APIRouter(include_in_schema=False)


@router.get(JWKS_PATH)
async def simulator_jwks(request: Request) -> dict[str, list[dict[str, str]]]:
    """The simulator's webhook signing keys, in fal's JWKS format."""
    return simulator_signer(request.app.state.settings).jwks()
