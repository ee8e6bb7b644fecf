"""Routes: ``/v1/agents/{name}/rollouts`` (canary rollouts with automatic rollback)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires
from corral.api._release_schemas import RolloutCreate, RolloutOut, RolloutStatusOut
from corral.evals import latest_eval
from corral.releases import RolloutPlan, abort_rollout, rollout_status, start_rollout
from corral.store import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["releases"])


@router.post("/agents/{name}/rollouts", response_model=RolloutOut, status_code=201)
async def post_rollout(
    name: str,
    body: RolloutCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
) -> RolloutOut:
    """Start a canary rollout; workers advance it, roll it back or promote it (as the caller).

    To a gated stage (``governance.eval_gate_stages``) the candidate must pass the promotion's
    eval gate first: 409 ``eval_gate_failed`` / ``eval_baseline_missing``.
    """
    plan = RolloutPlan(agent_name=name, **body.model_dump())
    governance = platform.settings.governance
    async with platform.store.transaction(caller.tenant_id) as session:
        row = await start_rollout(
            session,
            plan,
            tenant_id=caller.tenant_id,
            actor=caller.principal,
            actor_roles=sorted(caller.roles),
            now=utcnow(),
            evals=latest_eval,
            gate_stages=governance.eval_gate_stages,
            require_eval_for_production=governance.require_eval_for_production,
        )
    return RolloutOut.model_validate(row)


@router.get("/agents/{name}/rollout", response_model=RolloutStatusOut)
async def get_rollout(
    name: str,
    platform: PlatformDep,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("releases.read")],
) -> RolloutStatusOut:
    """The agent's latest rollout, its share now, per-variant metrics and breaches."""
    return RolloutStatusOut.of(
        await rollout_status(
            session, name, tenant_id=caller.tenant_id, source=platform.success_source
        )
    )


@router.post("/agents/{name}/rollout/abort", response_model=RolloutStatusOut)
async def post_rollout_abort(
    name: str,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
) -> RolloutStatusOut:
    """Abort the agent's active rollout: the stage keeps its version (audited)."""
    async with platform.store.transaction(caller.tenant_id) as session:
        await abort_rollout(
            session, name, tenant_id=caller.tenant_id, actor=caller.principal, now=utcnow()
        )
    async with platform.store.read(caller.tenant_id) as session:
        return RolloutStatusOut.of(
            await rollout_status(
                session, name, tenant_id=caller.tenant_id, source=platform.success_source
            )
        )
