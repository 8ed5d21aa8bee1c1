from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from avatar_api.errors import ServiceUnavailable, problem_responses
from avatar_api.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    migrations: str


@router.get("/healthz", operation_id="healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    responses=problem_responses(ServiceUnavailable),
)
async def readyz(request: Request) -> Readiness:
    """Readiness: the database answers and its schema is at the latest migration."""
    engine = request.app.state.engine
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        revision = await current_revision(engine)
    except Exception as exc:  # any driver error means "not ready", never a 500
        raise ServiceUnavailable(f"Database unreachable: {type(exc).__name__}.") from exc
    head = head_revision()
    if revision != head:
        raise ServiceUnavailable(
            f"Database schema is at {revision or 'nothing'}, expected {head}: "
            "run `avatar-api migrate`."
        )
    if getattr(request.app.state, "draining", False):
        raise ServiceUnavailable("Shutting down.")
    return Readiness(status="ok", database="ok", migrations=revision or "")
