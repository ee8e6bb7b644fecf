"""Routes: ``/v1/agents/{name}/promotions``, ``/rollback`` and ``/stages`` (releases)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires
from corral.api._schemas import PromotionCreate, PromotionOut, RollbackCreate, StageBindingOut
from corral.errors import PolicyRefused
from corral.evals import latest_eval
from corral.registry import list_promotions, promote, rollback, stage_bindings

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["releases"])


@router.post(
    "/agents/{name}/promotions",
    response_model=PromotionOut,
    status_code=201,
    responses={
        202: {"model": PromotionOut, "description": "Awaiting approval: see `approval_id`."},
        404: {"description": "Unknown agent or version; `known` lists what exists."},
    },
)
async def post_promotion(
    name: str,
    body: PromotionCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
    response: Response,
) -> PromotionOut:
    """Promote a version to a stage: 201 when bound now, 202 when it awaits approval.

    Policy ``agent.promote`` decides (the default policy needs two ``platform-admin``
    approvals for ``production``); a pending promotion binds once its approval request is
    approved (``POST /v1/approvals/{id}/approve``).
    """
    governance = platform.settings.governance
    try:
        async with platform.store.transaction(caller.tenant_id) as session:
            result = await promote(
                session,
                platform.governance,
                tenant_id=caller.tenant_id,
                actor=caller.principal,
                agent_name=name,
                version=body.version,
                stage=body.stage,
                stages=governance.stages,
                approval_ttl=timedelta(seconds=governance.approval_ttl_seconds),
                actor_roles=caller.roles,
                evals=latest_eval,
                gate_stages=governance.eval_gate_stages,
                require_eval_for_production=governance.require_eval_for_production,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, caller.tenant_id)  # the refusal is evidence too
        raise
    if result.status == "pending_approval":
        response.status_code = 202
    return PromotionOut.model_validate(result)


@router.post("/agents/{name}/rollback", response_model=PromotionOut, status_code=201)
async def post_rollback(
    name: str,
    body: RollbackCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
) -> PromotionOut:
    """Re-bind a stage to the version it ran before (again: one further back).

    Needs permission to promote to the stage, never approvals: it is the emergency exit.
    """
    try:
        async with platform.store.transaction(caller.tenant_id) as session:
            result = await rollback(
                session,
                platform.governance,
                tenant_id=caller.tenant_id,
                actor=caller.principal,
                agent_name=name,
                stage=body.stage,
                stages=platform.settings.governance.stages,
                actor_roles=caller.roles,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, caller.tenant_id)
        raise
    return PromotionOut.model_validate(result)


@router.get("/agents/{name}/promotions", response_model=list[PromotionOut])
async def get_promotions(
    name: str,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("releases.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[PromotionOut]:
    """The agent's promotions and rollbacks in every stage, newest first."""
    rows = await list_promotions(session, name, tenant_id=caller.tenant_id, limit=limit)
    return [PromotionOut.model_validate(row) for row in rows]


@router.get("/agents/{name}/stages", response_model=list[StageBindingOut])
async def get_stages(
    name: str,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("releases.read")],
    platform: PlatformDep,
) -> list[StageBindingOut]:
    """The version each stage of the agent runs now, in the configured stage order."""
    rows = await stage_bindings(
        session, name, tenant_id=caller.tenant_id, stages=platform.settings.governance.stages
    )
    return [StageBindingOut.model_validate(row) for row in rows]
