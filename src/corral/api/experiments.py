"""Routes: ``/v1/experiments`` (A/B experiments between versions of an agent)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires
from corral.api._release_schemas import ExperimentCreate, ExperimentOut, ExperimentStatusOut
from corral.releases import (
    ExperimentPlan,
    experiment_status,
    list_experiments,
    start_experiment,
    stop_experiment,
)
from corral.store import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["releases"])


@router.post("/experiments", response_model=ExperimentOut, status_code=201)
async def post_experiment(
    body: ExperimentCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
) -> ExperimentOut:
    """Start splitting an agent's new runs in a stage between versions (audited)."""
    plan = ExperimentPlan(
        name=body.name,
        agent_name=body.agent,
        stage=body.stage,
        variants=[(v.name, v.version, v.weight_percent) for v in body.variants],
        key_by=body.key_by,
        metric=body.metric,
        min_samples=body.min_samples,
        alpha=body.alpha,
        max_duration=timedelta(hours=body.max_duration_hours),
    )
    async with platform.store.transaction(caller.tenant_id) as session:
        row = await start_experiment(
            session, plan, tenant_id=caller.tenant_id, actor=caller.principal, now=utcnow()
        )
    return ExperimentOut.model_validate(row)


@router.get("/experiments", response_model=list[ExperimentOut])
async def get_experiments(
    session: ReadSessionDep, caller: Annotated[Caller, requires("releases.read")]
) -> list[ExperimentOut]:
    """The tenant's experiments, newest first."""
    rows = await list_experiments(session, tenant_id=caller.tenant_id)
    return [ExperimentOut.model_validate(row) for row in rows]


@router.get("/experiments/{experiment_id}", response_model=ExperimentStatusOut)
async def get_experiment(
    experiment_id: str,
    platform: PlatformDep,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("releases.read")],
) -> ExperimentStatusOut:
    """An experiment with its per-variant metrics and the stop rule's verdict now."""
    status = await experiment_status(
        session,
        experiment_id,
        tenant_id=caller.tenant_id,
        now=utcnow(),
        source=platform.success_source,
    )
    return ExperimentStatusOut.of(status)


@router.post("/experiments/{experiment_id}/stop", response_model=ExperimentStatusOut)
async def post_experiment_stop(
    experiment_id: str,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("releases.promote")],
) -> ExperimentStatusOut:
    """Stop a running experiment: its split ends (audited ``experiment.stopped``)."""
    async with platform.store.transaction(caller.tenant_id) as session:
        status = await stop_experiment(
            session,
            experiment_id,
            tenant_id=caller.tenant_id,
            actor=caller.principal,
            now=utcnow(),
            source=platform.success_source,
        )
    return ExperimentStatusOut.of(status)
