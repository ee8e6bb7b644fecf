"""The overview: runs per day by status, health, costs week over week, what needs a person."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import Request
from starlette.responses import Response

from corral.approvals import Approval, list_approvals
from corral.costs import costs_by_day_and_agent
from corral.platform import Platform
from corral.portal._routes import router
from corral.portal._web import platform_of, render, require, session_of
from corral.runtime import KillSwitchInfo, RunOverview, list_kill_switches, run_overview
from corral.store import utcnow

__all__ = ["STATUS_COLORS", "Bar", "open_breakers", "overview"]

WINDOW_DAYS = 7
"""The overview's window: runs, latency and failure rate of the last 7 UTC days."""

STATUS_COLORS = {
    "SUCCEEDED": "ok",
    "RUNNING": "run",
    "QUEUED": "run",
    "AWAITING_APPROVAL": "wait",
    "IN_DOUBT": "wait",
    "CANCELLED": "muted",
}
"""CSS class of each status in charts and badges; every other status is ``bad``."""

_CHART_HEIGHT = 120
_BAR_WIDTH = 28
_BAR_GAP = 12


@dataclass(frozen=True)
class Bar:
    """One rectangle of a server-rendered SVG chart (pixels; y grows downwards)."""

    x: int
    y: int
    width: int
    height: int
    css: str
    title: str


def _days(today: date, count: int) -> list[str]:
    return [(today - timedelta(days=count - 1 - i)).isoformat() for i in range(count)]


def _runs_chart(runs_by_day: dict[str, dict[str, int]], days: list[str]) -> list[Bar]:
    """Stacked bars: each day's runs, one segment per status."""
    peak = max((sum(s.values()) for s in runs_by_day.values()), default=0) or 1
    bars: list[Bar] = []
    for i, day in enumerate(days):
        y = _CHART_HEIGHT
        for status, count in sorted(runs_by_day.get(day, {}).items()):
            height = max(1, round(count * _CHART_HEIGHT / peak))
            y -= height
            css = STATUS_COLORS.get(status, "bad")
            title = f"{day}: {count} {status}"
            bars.append(Bar(i * (_BAR_WIDTH + _BAR_GAP), y, _BAR_WIDTH, height, css, title))
    return bars


def _cost_chart(cost_by_day: dict[str, Decimal], days: list[str]) -> list[Bar]:
    """This week's daily cost next to the same weekday a week earlier."""
    peak = max(cost_by_day.values(), default=Decimal(0)) or Decimal(1)
    bars: list[Bar] = []
    for i, day in enumerate(days[WINDOW_DAYS:]):
        before = days[i]
        for j, (when, css) in enumerate(((before, "muted"), (day, "run"))):
            cost = cost_by_day.get(when, Decimal(0))
            height = int(cost * _CHART_HEIGHT / peak)
            x = i * (_BAR_WIDTH + _BAR_GAP) + j * (_BAR_WIDTH // 2)
            title = f"{when}: ${cost:.4f}"
            bars.append(Bar(x, _CHART_HEIGHT - height, _BAR_WIDTH // 2, height, css, title))
    return bars


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


async def _costs(request: Request, tenant_id: str, now: datetime) -> dict[str, Any]:
    platform = platform_of(request)
    since = datetime.combine(now.date() - timedelta(days=2 * WINDOW_DAYS - 1), datetime.min.time())
    days = _days(now.date(), 2 * WINDOW_DAYS)
    week_start = days[WINDOW_DAYS]
    # One statement per day and agent; its sums per day and per agent of this week are the
    # figures a report by day (two weeks) and one by agent (this week) would give.
    cost_by_day: dict[str, Decimal] = {}
    cost_by_agent: dict[str, Decimal] = {}
    for day, agent, cost in await costs_by_day_and_agent(
        platform.store, since=since.replace(tzinfo=now.tzinfo), tenant_id=tenant_id
    ):
        cost_by_day[day] = cost_by_day.get(day, Decimal(0)) + cost
        if day >= week_start:  # ISO days sort as text
            cost_by_agent[agent] = cost_by_agent.get(agent, Decimal(0)) + cost
    this_week = sum((cost_by_day.get(d, Decimal(0)) for d in days[WINDOW_DAYS:]), Decimal(0))
    last_week = sum((cost_by_day.get(d, Decimal(0)) for d in days[:WINDOW_DAYS]), Decimal(0))
    change = None if not last_week else float((this_week - last_week) / last_week)
    top_agents = sorted(cost_by_agent.items(), key=lambda item: (-item[1], item[0]))[:5]
    return {
        "cost_bars": _cost_chart(cost_by_day, days),
        "cost_this_week": this_week,
        "cost_last_week": last_week,
        "cost_change": "n/a" if change is None else f"{change * 100:+.0f}%",
        "top_agents": top_agents,
    }


@router.get("")
@router.get("/")
async def overview(request: Request) -> Response:
    """The overview page (permission ``runs.read``, as ``GET /v1/runs``)."""
    session = await session_of(request)
    require(session, "runs.read")
    principal = session.principal
    platform = platform_of(request)
    now = utcnow()
    days = _days(now.date(), WINDOW_DAYS)
    since = datetime.combine(now.date() - timedelta(days=WINDOW_DAYS - 1), datetime.min.time())

    async def runs_part() -> RunOverview:
        return await run_overview(
            platform.store, tenant_id=principal.tenant_id, since=since.replace(tzinfo=now.tzinfo)
        )

    async def approvals_part() -> list[Approval] | None:
        if not principal.can("approvals.read"):
            return None
        return await list_approvals(
            platform.store, tenant_id=principal.tenant_id, status="pending", limit=20
        )

    async def switches_part() -> list[KillSwitchInfo] | None:
        if not principal.can("killswitch.read"):
            return None
        return await list_kill_switches(platform.store, tenant_id=principal.tenant_id)

    # Independent reads, each in a snapshot of its own: concurrently, not one after another.
    runs, approvals, switches, costs, breakers = await asyncio.gather(
        runs_part(),
        approvals_part(),
        switches_part(),
        _costs(request, principal.tenant_id, now),
        open_breakers(platform, principal.tenant_id),
    )
    context = {
        "title": "Overview",
        "runs": runs,
        "days": days,
        "run_bars": _runs_chart(runs.runs_by_day, days),
        "bar_step": _BAR_WIDTH + _BAR_GAP,
        "chart_height": _CHART_HEIGHT,
        "failure_rate": _percent(runs.failure_rate),
        "p50": _seconds(runs.latency_p50_seconds),
        "p95": _seconds(runs.latency_p95_seconds),
        "approvals": approvals,
        "switches": switches,
        "breakers": breakers,
        **costs,
    }
    return render(request, "overview.html", context)


async def open_breakers(platform: Platform, tenant_id: str) -> list[tuple[str, str]]:
    """``(upstream, state)`` of the breakers open or half-open in this process.

    A model deployment is named ``provider/model`` (its base URL may carry credentials); the
    tenant's own MCP servers by name (their breakers are keyed ``mcp:TENANT/NAME``); other
    tool upstreams, other tenants' servers included, are counted, not named.
    """
    found: list[tuple[str, str]] = []
    for key, state in sorted(platform.models.breakers.snapshot().items()):
        if state != "closed":
            provider, _, rest = key.partition("|")
            found.append((f"model {provider}/{rest.rpartition('|')[2]}", state))
    tools = {
        k: v for k, v in platform.tools.resilience.breakers.snapshot().items() if v != "closed"
    }
    if not tools:
        return found
    own = f"mcp:{tenant_id}/"  # MCP breakers are keyed by tenant and server name
    hidden = 0
    for key, state in sorted(tools.items()):
        if key.startswith(own):
            found.append((f"MCP server {key.removeprefix(own)}", state))
        else:
            hidden += 1
    if hidden:
        found.append((f"{hidden} other tool upstream(s)", "open or half-open"))
    return found
