"""Routes: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), both public.

Liveness does no I/O: it answers while the event loop runs, so an orchestrator restarts only a
process that is wedged. Readiness runs the checks of :meth:`corral.platform.Platform.readiness`
(store and migrations, embedded model, Redis, MCP upstreams' breakers, disk, master key): 200
when none failed, 503 naming each failed check and what to do. Both are public, so neither
says anything sensitive (no URL, host, path or tenant; see :mod:`corral.observability`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from corral.api._deps import PlatformDep, requires
from corral.tenancy import PUBLIC

__all__ = ["router"]

router = APIRouter(tags=["health"])

_READINESS = {
    "description": "Every check's status and detail; `failed` names the failed checks.",
    "content": {
        "application/json": {
            "example": {
                "status": "not_ready",
                "failed": ["migrations"],
                "checks": {
                    "store": {"status": "ok", "detail": "sqlite answers"},
                    "migrations": {
                        "status": "fail",
                        "detail": "the database is at revision '0012', this Corral needs "
                        "'0013'; run `corral db upgrade`",
                    },
                },
            }
        }
    },
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


@router.get("/readyz", responses={200: _READINESS, 503: _READINESS})
async def readyz(platform: PlatformDep, _public: Annotated[None, requires(PUBLIC)]) -> JSONResponse:
    """Readiness: 200 when every check passes, 503 naming each failed check and the fix."""
    readiness = await platform.readiness()
    return JSONResponse(readiness.to_json(), status_code=200 if readiness.ready else 503)
