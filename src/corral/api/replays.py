"""Routes: ``POST /v1/runs/{id}/replay`` (re-run a recorded run, never repeating an effect)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import ReplayCreate, RunOut
from corral.replay import start_replay
from corral.runtime import get_run

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["runs"])


@router.post("/runs/{run_id}/replay", response_model=RunOut, status_code=201)
async def post_replay(
    run_id: str,
    body: ReplayCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("runs.create")],
) -> RunOut:
    """Replay a finished run as a new run (``QUEUED``), in stage ``dev``.

    Without ``agent``/``version``: an exact replay, with the recorded model outputs and tool
    results (the same calls and answer). With them: what that version would have done, served
    the recorded tool results where its calls match; a side-effecting call with no recorded
    result is denied. No side-effecting tool ever runs again.
    """
    started = await start_replay(
        platform.store,
        run_id,
        tenant_id=caller.tenant_id,
        requested_by=caller.principal,
        requester_roles=caller.roles,
        agent=body.agent,
        version=body.version,
        workspaces=platform.workspaces,
        governance=platform.governance,
        quotas=platform.quotas,
    )
    platform.worker.wake()
    async with platform.store.read(caller.tenant_id) as session:
        run = await get_run(session, started.run_id, tenant_id=caller.tenant_id)
    return RunOut.model_validate(run)
