"""Routes: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), both public.

Liveness does no I/O: it answers while the event loop runs, so an orchestrator restarts only a
process that is wedged. Readiness runs the checks of :meth:`corral.platform.Platform.readiness`
(store and migrations, embedded model, Redis, MCP upstreams' breakers, disk, master key): 200
when none failed, 503 naming each failed check and what to do. Both are public, so neither
says anything sensitive (no URL, host, path or tenant; see :mod:`corral.observability`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from corral.api._deps import PlatformDep, requires
from corral.observability import CheckStatus
from corral.tenancy import PUBLIC

__all__ = ["router"]

router = APIRouter(tags=["health"])


class CheckOut(BaseModel):
    """One readiness check."""

    status: CheckStatus
    detail: str
    """What was checked, and on failure what to do (no URL, host or tenant name)."""


class ReadinessOut(BaseModel):
    """``GET /readyz``: every check's status; ``failed`` names the failed ones."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "not_ready",
                "failed": ["migrations"],
                "checks": {
                    "store": {"status": "ok", "detail": "sqlite answers"},
                    "migrations": {
                        "status": "fail",
                        "detail": "the database is at revision '0016', this Corral needs "
                        "'0017'; run `corral db upgrade`",
                    },
                },
            }
        }
    )

    status: Literal["ready", "not_ready"]
    failed: list[str]
    checks: dict[str, CheckOut]


_READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": ReadinessOut, "description": "Every check passed (or only warned)."},
    503: {"model": ReadinessOut, "description": "A check failed: `failed` names it."},
}


@router.get("/healthz")
async def healthz(
    platform: PlatformDep, _public: Annotated[None, requires(PUBLIC)]
) -> dict[str, object]:
    """Liveness: the process answers (no I/O); the store's kind and the model providers."""
    return {
        "status": "ok",
        "store": platform.store.dialect,
        "providers": sorted(platform.models.providers),
    }


@router.get("/readyz", responses=_READINESS)
async def readyz(platform: PlatformDep, _public: Annotated[None, requires(PUBLIC)]) -> JSONResponse:
    """Readiness: 200 when every check passes, 503 naming each failed check and the fix."""
    readiness = await platform.readiness()
    return JSONResponse(readiness.to_json(), status_code=200 if readiness.ready else 503)
