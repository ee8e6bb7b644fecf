"""Runs: a filterable, paginated list with live status; a run's detail; its cancel button.

The detail shows steps, decisions, tool calls, approvals and the span waterfall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from starlette.responses import Response

from corral.approvals import list_approvals
from corral.errors import InvalidRequest
from corral.policy import list_run_decisions
from corral.portal._live import cursor_of  # first: its /runs/events precedes /runs/{run_id}
from corral.portal._routes import router
from corral.portal._web import PORTAL_PATH, platform_of, redirect, render, require, session_of
from corral.runtime import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    cancel_run,
    get_run,
    list_run_spans,
    list_runs,
    list_steps,
)
from corral.store import utcnow

__all__ = ["PAGE_SIZE", "WaterfallBar", "cancel", "run_detail", "run_status", "runs", "runs_table"]

PAGE_SIZE = 50
"""Runs per page of the list."""


@dataclass(frozen=True)
class WaterfallBar:
    """One span of the waterfall, in percent of the trace's duration."""

    name: str
    depth: int
    left_pct: float
    width_pct: float
    duration_ms: float
    status: str


def _filters(request: Request) -> dict[str, str]:
    query = request.query_params
    agent = query.get("agent", "").strip()[:63]
    status = query.get("status", "").strip()
    if status and status not in RUN_STATUSES:
        raise InvalidRequest(
            f"Unknown run status {status!r}; use one of {', '.join(sorted(RUN_STATUSES))}."
        )
    before = query.get("before", "").strip()[:40]
    return {k: v for k, v in (("agent", agent), ("status", status), ("before", before)) if v}


async def _table_context(request: Request) -> dict[str, Any]:
    session = await session_of(request)
    require(session, "runs.read")
    tenant_id = session.principal.tenant_id
    filters = _filters(request)
    since = cursor_of(utcnow())  # taken before the read: no change falls between the two
    async with platform_of(request).store.read(tenant_id) as db:
        rows = await list_runs(
            db,
            tenant_id=tenant_id,
            agent_name=filters.get("agent"),
            status=filters.get("status"),
            limit=PAGE_SIZE,
            before=filters.get("before"),
        )
    keep = {k: v for k, v in filters.items() if k != "before"}
    next_page = (
        urlencode({**keep, "before": rows[-1].id}) if len(rows) == PAGE_SIZE and rows else None
    )
    return {
        "rows": rows,
        "filters": filters,
        "query": urlencode(filters),
        "next_page": next_page,
        "live": any(r.status not in TERMINAL_STATUSES for r in rows),
        "since": since,
    }


@router.get("/runs")
async def runs(request: Request) -> Response:
    """The runs page (permission ``runs.read``)."""
    context = await _table_context(request)
    context |= {"title": "Runs", "statuses": sorted(RUN_STATUSES)}
    return render(request, "runs.html", context)


@router.get("/runs-table")
async def runs_table(request: Request) -> Response:
    """The runs table alone: htmx polls it while a listed run is not finished."""
    return render(request, "_runs_table.html", await _table_context(request))


def waterfall(spans: list[dict[str, Any]]) -> list[WaterfallBar]:
    """Place each span on the trace's time axis, indented by its depth in the span tree."""
    if not spans:
        return []
    start = min(s["start_time"] for s in spans)
    end = max(s["end_time"] for s in spans)
    total = max((end - start).total_seconds(), 1e-6)
    parents = {s["span_id"]: s["parent_span_id"] for s in spans}

    def depth(span_id: str) -> int:
        found, parent = 0, parents.get(span_id)
        while parent in parents and found < 32:
            found, parent = found + 1, parents[parent]
        return found

    return [
        WaterfallBar(
            name=s["name"],
            depth=depth(s["span_id"]),
            left_pct=round((s["start_time"] - start).total_seconds() * 100 / total, 2),
            width_pct=max(0.5, round(s["duration_ms"] / 10 / total, 2)),
            duration_ms=round(s["duration_ms"], 1),
            status=s["status"],
        )
        for s in spans
    ]


@router.get("/runs/{run_id}")
async def run_detail(request: Request, run_id: str) -> Response:
    """One run: status, tokens and cost, steps with tool calls, decisions, approvals, spans."""
    session = await session_of(request)
    require(session, "runs.read")
    principal = session.principal
    platform = platform_of(request)
    async with platform.store.read(principal.tenant_id) as db:
        run = await get_run(db, run_id, tenant_id=principal.tenant_id)
        steps = await list_steps(db, run_id, tenant_id=principal.tenant_id)
        spans = await list_run_spans(db, run_id, tenant_id=principal.tenant_id)
        decisions = await list_run_decisions(db, run_id, tenant_id=principal.tenant_id)
    approvals = (
        await list_approvals(
            platform.store, tenant_id=principal.tenant_id, run_id=run_id, limit=100
        )
        if principal.can("approvals.read")
        else []
    )
    context = {
        "title": f"Run {run.id}",
        "run": run,
        "steps": steps,
        "decisions": decisions,
        "approvals": approvals,
        "bars": waterfall(spans),
        "finished": run.status in TERMINAL_STATUSES,
    }
    return render(request, "run.html", context)


@router.get("/runs/{run_id}/status")
async def run_status(request: Request, run_id: str) -> Response:
    """The run's status panel alone: polled by htmx until the run finishes (then it reloads)."""
    session = await session_of(request)
    require(session, "runs.read")
    tenant_id = session.principal.tenant_id
    async with platform_of(request).store.read(tenant_id) as db:
        run = await get_run(db, run_id, tenant_id=tenant_id)
    finished = run.status in TERMINAL_STATUSES
    if finished and request.query_params.get("was") not in TERMINAL_STATUSES:
        # It finished while the page was open: reload it for the final steps and answer.
        return redirect(request, f"{PORTAL_PATH}/runs/{run.id}")
    return render(request, "_run_status.html", {"run": run, "finished": finished})


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str) -> Response:
    """Cancel the run as ``POST /v1/runs/{id}/cancel`` does (permission ``runs.control``)."""
    session = await session_of(request)
    require(session, "runs.control")
    platform = platform_of(request)
    principal = session.principal
    outcome = await cancel_run(
        platform.store, run_id, tenant_id=principal.tenant_id, actor=principal.principal
    )
    if outcome == "RUNNING":
        await platform.worker.check_signals()
    return redirect(request, f"{PORTAL_PATH}/runs/{run_id}")
