"""Routes: run control (``/v1/runs/{id}/cancel``, ``/v1/runs/{id}/resolve``) and kill switches.

Every mutation is one transaction, audited by the runtime function it calls.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import (
    KillSwitchCreate,
    KillSwitchEngagedOut,
    KillSwitchOut,
    KillSwitchRelease,
    KillSwitchScope,
    RunOut,
    RunResolutionOut,
    RunResolve,
)
from corral.errors import Forbidden, InvalidRequest
from corral.platform import Platform
from corral.runtime import (
    cancel_run,
    engage_kill_switch,
    get_run,
    list_kill_switches,
    release_kill_switch,
    resolve_in_doubt,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["control"])


async def _run_out(platform: Platform, run_id: str, caller: Caller) -> RunOut:
    async with platform.store.read(caller.tenant_id) as session:
        return RunOut.model_validate(await get_run(session, run_id, tenant_id=caller.tenant_id))


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
async def post_cancel(
    run_id: str, platform: PlatformDep, caller: Annotated[Caller, requires("runs.control")]
) -> RunOut:
    """Cancel a run.

    A queued or paused run ends ``CANCELLED`` at once. A running one comes back ``RUNNING``
    with ``cancel_requested``: no new step or tool call starts, an in-flight model call is
    abandoned, and its worker ends it ``CANCELLED``. 409 if the run already ended.
    """
    outcome = await cancel_run(
        platform.store, run_id, tenant_id=caller.tenant_id, actor=caller.principal
    )
    run = await _run_out(platform, run_id, caller)  # as the cancel left it
    if outcome == "RUNNING":
        # A run this process drives stops now instead of at the worker's next signal poll.
        await platform.worker.check_signals()
    return run


@router.post("/runs/{run_id}/resolve", response_model=RunResolutionOut)
async def post_resolve(
    run_id: str,
    body: RunResolve,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("runs.control")],
) -> RunResolutionOut:
    """Settle the in-doubt tool call of an ``IN_DOUBT`` run and queue the run again.

    409 unless the run is ``IN_DOUBT``.
    """
    key = await resolve_in_doubt(
        platform.store,
        run_id,
        tenant_id=caller.tenant_id,
        actor=caller.principal,
        resolution=body.resolution,
        comment=body.comment,
    )
    platform.worker.wake()
    return RunResolutionOut(
        idempotency_key=key,
        resolution=body.resolution,
        run=await _run_out(platform, run_id, caller),
    )


def _target(scope: KillSwitchScope, target: str | None, caller: Caller) -> str:
    if scope == "agent":
        if not target:
            raise InvalidRequest(
                "An agent kill switch needs the agent's name as 'target' "
                "(`corral kill-switch engage --agent NAME --reason TEXT`)."
            )
        return target
    if scope == "tenant":
        if target not in (None, caller.tenant_id):
            raise InvalidRequest(
                f"A tenant kill switch covers your own tenant {caller.tenant_id!r}; leave out "
                "'target' (platform admins suspend other tenants with `corral tenants suspend`)."
            )
        return caller.tenant_id
    if not caller.can("killswitch.all"):
        raise Forbidden(
            f"{caller.id} may not engage or release the platform kill switch: it needs the "
            "platform-admin role.",
            code="permission_denied",
        )
    if target not in (None, "*"):
        raise InvalidRequest(
            f"A platform kill switch covers every run; its target is '*', not {target!r}."
        )
    return "*"


@router.get("/kill-switches", response_model=list[KillSwitchOut])
async def get_kill_switches(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("killswitch.read")],
    include_released: Annotated[
        bool, Query(description="Also list released switches (the history).")
    ] = False,
) -> list[KillSwitchOut]:
    """Kill switches of the caller's tenant and of the platform, newest first."""
    switches = await list_kill_switches(
        platform.store, tenant_id=caller.tenant_id, include_released=include_released
    )
    return [KillSwitchOut.model_validate(s) for s in switches]


@router.post("/kill-switches", response_model=KillSwitchEngagedOut, status_code=201)
async def post_kill_switch(
    body: KillSwitchCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("killswitch.tenant")],
) -> KillSwitchEngagedOut:
    """Engage a kill switch: no new run of what it covers starts (423) until it is released.

    Queued and paused runs it covers end ``KILLED`` at once (``killed_runs``); running ones at
    their next check, before a step or a tool call. 409 if the same switch is already engaged;
    404 for an agent switch naming an unknown agent.
    """
    switch, killed = await engage_kill_switch(
        platform.store,
        scope=body.scope,
        target=_target(body.scope, body.target, caller),
        tenant_id=caller.tenant_id,
        reason=body.reason,
        actor=caller.principal,
    )
    await platform.worker.check_signals()
    return KillSwitchEngagedOut.model_validate({**switch.__dict__, "killed_runs": killed})


@router.post("/kill-switches/release", response_model=KillSwitchOut)
async def post_kill_switch_release(
    body: KillSwitchRelease,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("killswitch.tenant")],
) -> KillSwitchOut:
    """Release an engaged kill switch; new runs may start again. 404 if it is not engaged."""
    switch = await release_kill_switch(
        platform.store,
        scope=body.scope,
        target=_target(body.scope, body.target, caller),
        tenant_id=caller.tenant_id,
        actor=caller.principal,
    )
    return KillSwitchOut.model_validate(switch)
