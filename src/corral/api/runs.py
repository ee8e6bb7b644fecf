"""Routes: ``/v1/agents/{name}/runs`` and ``/v1/runs``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from corral.api._deps import CallerDep, PlatformDep, SessionDep
from corral.api._schemas import Page, RunCreate, RunOut, SpanOut, StepOut, ToolCallOut
from corral.runtime import create_run, get_run, list_run_spans, list_runs, list_steps

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["runs"])


@router.post("/agents/{name}/runs", response_model=RunOut, status_code=201)
async def post_run(name: str, body: RunCreate, platform: PlatformDep, caller: CallerDep) -> RunOut:
    """Create a run (``QUEUED``); a worker picks it up. Poll ``GET /v1/runs/{id}``."""
    async with platform.store.transaction() as session:
        run = await create_run(
            session,
            tenant_id=caller.tenant_id,
            agent_name=name,
            task=body.task,
            requested_by=caller.principal,
            workspace=body.workspace,
            stage=body.stage,
            version=body.version,
            model=body.model,
        )
    platform.worker.wake()
    return RunOut.model_validate(run)


@router.get("/runs", response_model=Page[RunOut])
async def get_runs(
    session: SessionDep,
    caller: CallerDep,
    agent: Annotated[str | None, Query(description="Only runs of this agent.")] = None,
    status: Annotated[str | None, Query(description="Only runs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[RunOut]:
    """Runs, newest first, one page at a time."""
    rows = await list_runs(
        session,
        tenant_id=caller.tenant_id,
        agent_name=agent,
        status=status,
        limit=limit,
        before=before,
    )
    items = [RunOut.model_validate(r) for r in rows]
    return Page(items=items, next=items[-1].id if len(items) == limit else None)


@router.get("/runs/{run_id}", response_model=RunOut)
async def get_one_run(run_id: str, session: SessionDep, caller: CallerDep) -> RunOut:
    """A run's state, budgets used, output and terminal reason."""
    return RunOut.model_validate(await get_run(session, run_id, tenant_id=caller.tenant_id))


@router.get("/runs/{run_id}/steps", response_model=list[StepOut])
async def get_steps(
    run_id: str,
    session: SessionDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=-1, description="Only steps with a greater index.")] = -1,
) -> list[StepOut]:
    """The run's checkpointed steps with their tool calls, oldest first."""
    steps = await list_steps(session, run_id, tenant_id=caller.tenant_id, after=after)
    return [
        StepOut(
            index=step.index,
            kind=step.kind,
            model=step.model,
            decision=step.decision,
            error=step.error,
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            started_at=step.started_at,
            finished_at=step.finished_at,
            tool_calls=[ToolCallOut.model_validate(c) for c in calls],
        )
        for step, calls in steps
    ]


@router.get("/runs/{run_id}/spans", response_model=list[SpanOut])
async def get_spans(run_id: str, session: SessionDep, caller: CallerDep) -> list[SpanOut]:
    """Every span of the run's trace (``invoke_agent``, ``chat``, ``execute_tool``)."""
    spans = await list_run_spans(session, run_id, tenant_id=caller.tenant_id)
    return [SpanOut.model_validate(s) for s in spans]
