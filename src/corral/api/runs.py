"""Routes: ``/v1/agents/{name}/runs`` and ``/v1/runs``, with a run's event stream (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires
from corral.api._schemas import (
    MAX_CURSOR,
    Page,
    RunCreate,
    RunEventOut,
    RunOut,
    SpanOut,
    StepOut,
    ToolCallOut,
)
from corral.runtime import (
    RUN_STATUSES,
    RunEvent,
    answer_sources,
    get_run,
    list_run_spans,
    list_runs,
    list_steps,
    read_events,
    start_run,
)
from corral.store import Store

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["runs"])

SSE_POLL_SECONDS = 0.2
"""How often an event stream reads the store for newer events of its run."""

SSE_KEEPALIVE_SECONDS = 15.0
"""Seconds of silence after which an event stream sends a ``: keep-alive`` comment, so that
proxies and clients do not drop a stream whose run is waiting (on a model, a person...)."""

_SSE_BATCH = 500


@router.post("/agents/{name}/runs", response_model=RunOut, status_code=201)
async def post_run(
    name: str,
    body: RunCreate,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("runs.create")],
) -> RunOut:
    """Create a run (``QUEUED``); a worker picks it up. Poll ``GET /v1/runs/{id}``.

    Builders may run in ``dev`` and ``staging``; ``production`` needs an operator. 429 when a
    tenant quota (``runs_per_day``, ``concurrent_runs``) is used up, with ``Retry-After``.
    """
    run = await start_run(
        platform.store,
        tenant_id=caller.tenant_id,
        agent_name=name,
        task=body.task,
        requested_by=caller.principal,
        requester_roles=caller.roles,
        requester_groups=caller.groups,
        stage=body.stage,
        version=body.version,
        model=body.model,
        workspace=body.workspace,
        workspaces=platform.workspaces,
        governance=platform.governance,
        quotas=platform.quotas,
        session_id=body.session_id,
    )
    platform.worker.wake()
    return RunOut.model_validate(run)


@router.get("/runs", response_model=Page[RunOut])
async def get_runs(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("runs.read")],
    agent: Annotated[str | None, Query(description="Only runs of this agent.")] = None,
    status: Annotated[
        str | None,
        Query(
            pattern=f"^({'|'.join(sorted(RUN_STATUSES))})$",
            description="Only runs in this status.",
        ),
    ] = None,
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
async def get_one_run(
    run_id: str, session: ReadSessionDep, caller: Annotated[Caller, requires("runs.read")]
) -> RunOut:
    """A run's state, budgets used, output, terminal reason and the sources its answer cites."""
    run = RunOut.model_validate(await get_run(session, run_id, tenant_id=caller.tenant_id))
    if run.status == "SUCCEEDED":
        run.sources = await answer_sources(session, run_id)
    return run


@router.get("/runs/{run_id}/steps", response_model=list[StepOut])
async def get_steps(
    run_id: str,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("runs.read")],
    after: Annotated[
        int, Query(ge=-1, le=MAX_CURSOR, description="Only steps with a greater index.")
    ] = -1,
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
async def get_spans(
    run_id: str, session: ReadSessionDep, caller: Annotated[Caller, requires("runs.read")]
) -> list[SpanOut]:
    """Every span of the run's trace (``invoke_agent``, ``chat``, ``execute_tool``)."""
    spans = await list_run_spans(session, run_id, tenant_id=caller.tenant_id)
    return [SpanOut.model_validate(s) for s in spans]


def _server_sent_event(run_id: str, row: RunEvent) -> str:
    data = RunEventOut(run_id=run_id, type=row.type, data=row.data, created_at=row.created_at)
    return f"id: {row.id}\nevent: {row.type}\ndata: {data.model_dump_json()}\n\n"


async def _event_stream(
    request: Request, store: Store, run_id: str, tenant_id: str, after: int
) -> AsyncIterator[str]:
    """The run's events after ``after`` as SSE text, until ``run.finished`` has been sent.

    The stream reads the table, never in-process state, so it carries the events of every
    worker that drives the run; no transaction stays open between reads.
    """
    clock = asyncio.get_running_loop().time
    quiet_since = clock()
    while True:
        rows, ended = await read_events(
            store, run_id, tenant_id=tenant_id, after=after, limit=_SSE_BATCH
        )
        for row in rows:
            after = row.id
            yield _server_sent_event(run_id, row)
            if row.type == "run.finished":
                return
        if len(rows) == _SSE_BATCH:
            continue
        if ended:  # ended without a run.finished event: nothing more will come
            return
        if rows:
            quiet_since = clock()
        elif clock() - quiet_since >= SSE_KEEPALIVE_SECONDS:
            quiet_since = clock()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(SSE_POLL_SECONDS)


_EVENT_ID = r"^[0-9]{0,18}$"
"""An event id as ``Last-Event-ID`` carries it: decimal digits, at most 18 (below 2**63)."""


def _event_id(value: str) -> int:
    return int(value) if value else 0


_SSE_EXAMPLE = (
    "id: 42\nevent: step\n"
    'data: {"run_id": "run_...", "type": "step", "data": {"index": 0, "kind": "tool_calls", ...},'
    ' "created_at": "..."}\n\n'
)


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A Server-Sent Events stream (text/event-stream).",
            "content": {"text/event-stream": {"example": _SSE_EXAMPLE}},
        }
    },
)
async def get_run_events(
    run_id: str,
    request: Request,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("runs.read")],
    after: Annotated[
        int, Query(ge=0, le=MAX_CURSOR, description="Only events with a greater id.")
    ] = 0,
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=_EVENT_ID,
            description="Resume after this event id (SSE reconnect).",
        ),
    ] = "",
) -> StreamingResponse:
    """Stream the run's events as Server-Sent Events, oldest first, live until it finishes.

    Each event is ``id: <event id>``, ``event: <type>`` and ``data: <RunEventOut JSON>``; types
    are ``run.created``, ``step``, ``tool_call`` (after its step), ``run.paused``,
    ``run.resumed``, ``run.cancel_requested`` and ``run.finished``, after which the stream ends.
    A ``: keep-alive`` comment is sent after 15 s of silence. To resume, send
    ``Last-Event-ID`` (or ``?after=ID``): only later events are sent. 404 for an unknown run.
    """
    start = max(after, _event_id(last_event_id))
    async with platform.store.read(caller.tenant_id) as session:
        await get_run(session, run_id, tenant_id=caller.tenant_id)  # 404 before streaming
    return StreamingResponse(
        _event_stream(request, platform.store, run_id, caller.tenant_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
