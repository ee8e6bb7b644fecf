"""The overview's figures equal a straightforward computation over the rows (SQLite, PostgreSQL).

Hundreds of runs, tool calls and model calls over 16 days (some before each window, some of
another tenant) are inserted with known values; every figure the overview shows is computed
here in plain Python from those values and looked for in the page.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _portal_kit import ROLES, Portal, open_portal
from sqlalchemy import insert

from corral.costs import ModelCallRow
from corral.registry import get_agent, get_agent_version
from corral.runtime import TERMINAL_STATUSES, RunStatus
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import GovernanceSettings, Settings
from corral.store import new_id, utcnow

FAILED = {"FAILED", "TIMED_OUT", "BUDGET_EXCEEDED", "KILLED", "REJECTED"}
TOOLS = [f"tool.{name}" for name in ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta")]
AGENTS = ["repo-analyst", "billing-bot", "triage", "writer", "reviewer", "planner", None]


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    async with open_portal(settings) as found:
        yield found


@dataclass
class Rows:
    runs: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    costs: list[dict[str, Any]]


def _quiet_day(now: datetime) -> date:
    """A day of the 7-day window on which no run is created: it must have no row."""
    return now.date() - timedelta(days=2)


async def _insert(portal: Portal, now: datetime) -> Rows:
    rng = random.Random(13)
    async with portal.platform.store.read("default") as session:
        agent = await get_agent(session, "repo-analyst", tenant_id="default")
        _, version = await get_agent_version(
            session, agent.name, agent.latest_version, tenant_id="default"
        )
    statuses = list(RunStatus)
    durations = rng.sample(range(1, 100_000), 400)  # distinct, in hundredths of a second
    rows = Rows([], [], [])
    for i in range(400):
        created = now - timedelta(seconds=rng.uniform(60, 16 * 86400))
        if created.date() == _quiet_day(now):  # one day of the window without runs
            created -= timedelta(days=1)
        status = statuses[i % len(statuses)]
        finished = (
            created + timedelta(seconds=durations[i] / 100 + 0.003)
            if status in TERMINAL_STATUSES
            else None
        )
        run_id = new_id("run")
        rows.runs.append(
            {
                "id": run_id,
                "tenant_id": "default",
                "agent_id": agent.id,
                "agent_name": agent.name,
                "agent_version_id": version.id,
                "agent_version": agent.latest_version,
                "stage": "dev",
                "status": status.value,
                "task": f"task {i}",
                "requested_by": "user:test",
                "model": "scripted/test",
                "trace_id": f"{i:032x}",
                "step_count": 1,
                "created_at": created,
                "started_at": created,
                "finished_at": finished,
                "updated_at": finished or created,
            }
        )
        for j in range(rng.randrange(3)):
            rows.calls.append(
                {
                    "id": new_id("tc"),
                    "tenant_id": "default",
                    "run_id": run_id,
                    "step_index": 0,
                    "call_index": j,
                    "idempotency_key": f"{run_id}:0:{j}",
                    "tool_name": rng.choice(TOOLS[: 2 + i % 6]),
                    "arguments": {},
                    "status": "COMPLETED",
                    "started_at": created + timedelta(seconds=j),
                    "finished_at": created + timedelta(seconds=j + 1),
                }
            )
    for tenant in ("default", "acme"):
        for _ in range(600):
            cost = Decimal(rng.randrange(10**7)) / Decimal(10**9) if rng.random() > 0.05 else None
            rows.costs.append(
                {
                    "id": new_id("mc"),
                    "tenant_id": tenant,
                    "agent": rng.choice(AGENTS),
                    "alias": "scripted/test",
                    "deployment": "scripted/test",
                    "provider": "scripted",
                    "model": "test",
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cost_usd": cost,
                    "created_at": now - timedelta(seconds=rng.uniform(60, 16 * 86400)),
                }
            )
    async with portal.platform.store.transaction("default") as session:
        await session.execute(insert(RunRow), rows.runs)
        await session.execute(insert(ToolCallRow), rows.calls)
        mine = [c for c in rows.costs if c["tenant_id"] == "default"]
        await session.execute(insert(ModelCallRow), mine)
    async with portal.platform.store.transaction("acme") as session:
        theirs = [c for c in rows.costs if c["tenant_id"] == "acme"]
        await session.execute(insert(ModelCallRow), theirs)
    return rows


def _expected_runs(rows: Rows, since: datetime, days: list[str]) -> list[str]:
    """What the run tiles, the runs-per-day table and the top tools should show."""
    window = [r for r in rows.runs if r["created_at"] >= since]
    expected = [
        f'id="running-now">{sum(r["status"] == "RUNNING" for r in rows.runs)}</span>',
    ]
    per_day = Counter((r["created_at"].date().isoformat(), r["status"]) for r in window)
    for day in days:
        counts = sorted((s, n) for (d, s), n in per_day.items() if d == day)
        if not counts:  # a day without runs has no row (today, just after midnight UTC)
            continue
        badges = "".join(f'<span class="badge {s}">{s} {n}</span> ' for s, n in counts)
        expected.append(f"<tr><td>{day}</td><td>{badges}</td></tr>")
    done = [r for r in window if r["status"] in TERMINAL_STATUSES]
    failed = sum(r["status"] in FAILED for r in done)
    expected.append(f"{failed / len(done) * 100:.1f}%</span>")
    expected.append(f"failure rate (7 days, {len(done)} finished)")
    seconds = sorted((r["finished_at"] - r["created_at"]).total_seconds() for r in done)
    for rank, label in ((0.50, "p50"), (0.95, "p95")):
        value = seconds[math.ceil(rank * len(seconds)) - 1]
        expected.append(f'<span class="figure">{value:.2f} s</span><span>{label} run latency')
    tools = Counter(c["tool_name"] for c in rows.calls if c["started_at"] >= since)
    for name, n in sorted(tools.items(), key=lambda item: (-item[1], item[0]))[:5]:
        expected.append(f'<tr><td>{name}</td><td class="num">{n}</td></tr>')
    return expected


def _expected_costs(rows: Rows, days: list[str]) -> list[str]:
    """What the cost tile, the cost chart's titles and the top agents should show."""
    mine = [c for c in rows.costs if c["tenant_id"] == "default"]
    by_day: dict[str, Decimal] = {}
    by_agent: dict[str, Decimal] = {}
    for call in mine:
        day, cost = call["created_at"].date().isoformat(), call["cost_usd"] or Decimal(0)
        by_day[day] = by_day.get(day, Decimal(0)) + cost
        if day >= days[7]:
            agent = call["agent"] or "(none)"
            by_agent[agent] = by_agent.get(agent, Decimal(0)) + cost
    this_week = sum((by_day.get(d, Decimal(0)) for d in days[7:]), Decimal(0))
    last_week = sum((by_day.get(d, Decimal(0)) for d in days[:7]), Decimal(0))
    change = float((this_week - last_week) / last_week) * 100
    expected = [f"cost this week ({change:+.0f}% vs ${last_week:.4f})", f"${this_week:.4f}"]
    expected += [f"<title>{day}: ${by_day.get(day, Decimal(0)):.4f}</title>" for day in days]
    top = sorted(by_agent.items(), key=lambda item: (-item[1], item[0]))[:5]
    expected += [f'<tr><td>{name}</td><td class="num">${cost:.6f}</td></tr>' for name, cost in top]
    return expected


async def test_the_overview_figures_equal_a_plain_computation_over_the_rows(
    portal: Portal,
) -> None:
    now = utcnow()
    rows = await _insert(portal, now)
    alice = await portal.logged_in("user:alice")
    page = await alice.get("/ui")
    assert page.status_code == 200
    today = now.date()
    days = [(today - timedelta(days=13 - i)).isoformat() for i in range(14)]
    since = datetime.combine(today - timedelta(days=6), datetime.min.time(), tzinfo=now.tzinfo)
    expected = _expected_runs(rows, since, days[7:]) + _expected_costs(rows, days)
    missing = [figure for figure in expected if figure not in page.text]
    assert missing == [], page.text
    assert f"<tr><td>{_quiet_day(now).isoformat()}</td>" not in page.text
