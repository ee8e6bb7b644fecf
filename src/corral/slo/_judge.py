"""Judging one agent's objectives from its ended runs and its spend: pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

from corral.contracts import AgentSlo
from corral.runtime import EndedRun

__all__ = [
    "ERROR_STATUSES",
    "OBJECTIVES",
    "UNJUDGED_STATUSES",
    "Objective",
    "Observation",
    "judge",
    "p95",
]

Objective = Literal["error_rate", "p95_latency_seconds", "cost_usd_per_day"]
OBJECTIVES: Final[tuple[Objective, ...]] = (
    "error_rate",
    "p95_latency_seconds",
    "cost_usd_per_day",
)
"""The objectives an ``slo`` block can set, as stored and alerted."""

ERROR_STATUSES: Final = frozenset({"FAILED", "TIMED_OUT", "BUDGET_EXCEEDED", "LOOP_DETECTED"})
"""Terminal statuses that count as errors."""
UNJUDGED_STATUSES: Final = frozenset({"CANCELLED", "KILLED", "REJECTED"})
"""Terminal statuses a person chose: neither errors nor successes of the agent."""


@dataclass(frozen=True)
class Observation:
    """One objective judged (or not) at one time.

    Attributes:
        objective: Which objective.
        breached: Whether the observed value is over the limit; ``None``: not judged (fewer
            than ``min_runs`` judged runs in the window).
        limit: The limit, decimal text in the objective's unit (a fraction, seconds, US
            dollars).
        observed: The observed value, decimal text in the same unit (``""`` when not judged).
        window_minutes: Minutes judged over (cost per day: minutes since 00:00 UTC).
        runs: Judged runs in the window (``None`` for cost per day).
    """

    objective: Objective
    breached: bool | None
    limit: str
    observed: str
    window_minutes: int
    runs: int | None

    def details(self) -> dict[str, Any]:
        """The JSON-safe fields an audit event and a webhook body carry."""
        return {
            "objective": self.objective,
            "limit": self.limit,
            "observed": self.observed,
            "window_minutes": self.window_minutes,
            "runs": self.runs,
        }


def p95(values: Sequence[float]) -> float:
    """The 95th percentile of ``values`` by the nearest-rank method (``values`` not empty)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def _text(value: float | Decimal) -> str:
    if not isinstance(value, Decimal):
        value = Decimal(repr(round(float(value), 6)))
    return format(value.normalize(), "f") if value else "0"


def judge(
    slo: AgentSlo, runs: Sequence[EndedRun], cost_today_usd: Decimal, *, now: datetime
) -> list[Observation]:
    """Judge each objective ``slo`` sets.

    Args:
        slo: The agent's objectives.
        runs: The agent's runs that ended in the last ``slo.window_minutes``.
        cost_today_usd: The agent's model-call spend since 00:00 UTC, US dollars.
        now: The time judged at (UTC).

    Returns:
        One observation per objective set, in :data:`OBJECTIVES` order.
    """
    judged = [run for run in runs if run.status not in UNJUDGED_STATUSES]
    enough = len(judged) >= slo.min_runs
    found: list[Observation] = []
    if slo.error_rate_max is not None:
        limit = slo.error_rate_max
        rate = sum(run.status in ERROR_STATUSES for run in judged) / len(judged) if enough else 0
        found.append(_observed("error_rate", enough, rate, limit, slo, len(judged)))
    if slo.p95_latency_seconds_max is not None:
        limit = slo.p95_latency_seconds_max
        latency = p95([run.duration_seconds for run in judged]) if enough else 0.0
        found.append(_observed("p95_latency_seconds", enough, latency, limit, slo, len(judged)))
    if slo.cost_usd_per_day_max is not None:
        minutes = now.hour * 60 + now.minute
        found.append(
            Observation(
                "cost_usd_per_day",
                cost_today_usd > slo.cost_usd_per_day_max,
                _text(slo.cost_usd_per_day_max),
                _text(cost_today_usd),
                minutes,
                None,
            )
        )
    return found


def _observed(
    objective: Objective, enough: bool, value: float, limit: float, slo: AgentSlo, runs: int
) -> Observation:
    return Observation(
        objective,
        value > limit if enough else None,
        _text(limit),
        _text(value) if enough else "",
        slo.window_minutes,
        runs,
    )
