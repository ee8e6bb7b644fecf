"""Aggregates over a tenant's runs for dashboards (the portal's overview), in a few SQL queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, cast, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.runtime._service import TERMINAL_STATUSES
from corral.runtime._status import RunStatus
from corral.runtime._tables import RunRow, ToolCallRow

__all__ = ["RunOverview", "run_overview"]

_FAILED = frozenset(
    {
        RunStatus.FAILED,
        RunStatus.TIMED_OUT,
        RunStatus.BUDGET_EXCEEDED,
        RunStatus.KILLED,
        RunStatus.REJECTED,
    }
)
"""Terminal statuses counted as failures (cancelled runs are neither failures nor successes)."""


@dataclass(frozen=True)
class RunOverview:
    """A tenant's runs since a point in time.

    Attributes:
        runs_by_day: ``{"YYYY-MM-DD": {status: count}}`` by UTC day of creation.
        running_now: Runs ``RUNNING`` now (whenever created).
        finished: Terminal runs in the window.
        failed: Of those, runs that failed (failed, timed out, over budget, killed, rejected).
        latency_p50_seconds: Median seconds from creation to the end of a finished run.
        latency_p95_seconds: 95th percentile of the same, ``None`` without finished runs.
        tool_calls_by_tool: Tool calls in the window by tool, most called first.
    """

    runs_by_day: dict[str, dict[str, int]]
    running_now: int
    finished: int
    failed: int
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None
    tool_calls_by_tool: list[tuple[str, int]] = field(default_factory=list)

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished runs (0..1), ``None`` without finished runs."""
        return self.failed / self.finished if self.finished else None


def _day(column: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    # Stored as naive UTC text ("YYYY-MM-DD HH:MM:SS..."): its first 10 characters are the
    # day, 4-5x cheaper than strftime() over thousands of rows.
    return func.substr(column, literal_column("1"), literal_column("10"))


def _seconds(start: Any, end: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


async def run_overview(
    session: AsyncSession, *, tenant_id: str, since: datetime, top: int = 5
) -> RunOverview:
    """Runs per day by status, running runs, failure rate, latency percentiles, top tools.

    Args:
        session: A read transaction in ``tenant_id``.
        tenant_id: The tenant whose runs count.
        since: Runs created from this time on (aware UTC).
        top: How many tools the top list holds.

    Returns:
        The aggregates; percentiles are nearest-rank over the window's finished runs.
    """
    dialect = session.get_bind().dialect.name
    day = _day(RunRow.created_at, dialect)
    in_window = (RunRow.tenant_id == tenant_id, RunRow.created_at >= since)
    by_day: dict[str, dict[str, int]] = {}
    finished = failed = 0
    counted = await session.execute(
        select(day, RunRow.status, func.count()).where(*in_window).group_by(day, RunRow.status)
    )
    for when, status, count in counted:
        by_day.setdefault(str(when), {})[str(status)] = int(count)
        if status in TERMINAL_STATUSES:
            finished += int(count)
            failed += int(count) if status in _FAILED else 0
    running = await session.scalar(
        select(func.count()).where(RunRow.tenant_id == tenant_id, RunRow.status == "RUNNING")
    )
    p50, p95 = await _latency_percentiles(session, in_window, finished, dialect)
    return RunOverview(
        runs_by_day=dict(sorted(by_day.items())),
        running_now=int(running or 0),
        finished=finished,
        failed=failed,
        latency_p50_seconds=p50,
        latency_p95_seconds=p95,
        tool_calls_by_tool=await _calls_by_tool(session, tenant_id, since, top),
    )


async def _latency_percentiles(
    session: AsyncSession, in_window: tuple[Any, ...], finished: int, dialect: str
) -> tuple[float | None, float | None]:
    if not finished:
        return None, None
    seconds = cast(_seconds(RunRow.created_at, RunRow.finished_at, dialect), Float)
    ordered = (
        select(seconds)
        .where(*in_window, RunRow.finished_at.is_not(None))
        .order_by(seconds)
        .limit(1)
    )
    found: list[float | None] = []
    for rank in (0.50, 0.95):
        offset = max(0, min(finished - 1, int(rank * finished + 0.999999) - 1))
        value = await session.scalar(ordered.offset(offset))
        found.append(None if value is None else float(value))
    return found[0], found[1]


async def _calls_by_tool(
    session: AsyncSession, tenant_id: str, since: datetime, top: int
) -> list[tuple[str, int]]:
    count = func.count()
    rows = await session.execute(
        select(ToolCallRow.tool_name, count)
        .where(ToolCallRow.tenant_id == tenant_id, ToolCallRow.started_at >= since)
        .group_by(ToolCallRow.tool_name)
        .order_by(count.desc(), ToolCallRow.tool_name)
        .limit(top)
    )
    return [(str(name), int(n)) for name, n in rows]
