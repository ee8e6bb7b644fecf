"""Eval metrics: the summary a gate reads, and version comparisons with bootstrap intervals."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from corral.contracts import EvalThresholds

__all__ = ["BOOTSTRAP_SAMPLES", "Interval", "Summary", "bootstrap_delta", "p95", "summarize"]

BOOTSTRAP_SAMPLES = 2000
"""Resamples per bootstrap interval (percentile method, 95%)."""


@dataclass(frozen=True)
class Summary:
    """What one eval measured over its graded case runs.

    Attributes:
        case_runs: Case runs graded.
        passed_runs: Case runs whose graders all passed.
        success_rate: ``passed_runs / case_runs`` (0 when none).
        policy_violations: Tool calls denied by policy or needing an approval, all runs.
        median_cost_usd: Median cost of a case run's model calls, US dollars.
        p95_latency_seconds: 95th percentile (nearest rank) of run latency, seconds.
        judge_cost_usd: Model-as-judge calls, all runs, US dollars.
        passed: Whether the suite's thresholds hold and no case run errored.
        errored_runs: Case runs that ended in an error of the platform or the model provider
            (terminal reason ``model_error`` or ``internal_error``): they show nothing of the
            agent version, so an eval with any is inconclusive (not passed).
    """

    case_runs: int
    passed_runs: int
    success_rate: float
    policy_violations: int
    median_cost_usd: Decimal
    p95_latency_seconds: float | None
    judge_cost_usd: Decimal
    passed: bool
    errored_runs: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (money as strings)."""
        return {
            "case_runs": self.case_runs,
            "passed_runs": self.passed_runs,
            "success_rate": self.success_rate,
            "policy_violations": self.policy_violations,
            "median_cost_usd": _usd(self.median_cost_usd),
            "p95_latency_seconds": self.p95_latency_seconds,
            "judge_cost_usd": _usd(self.judge_cost_usd),
            "passed": self.passed,
            "errored_runs": self.errored_runs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        """The inverse of :meth:`to_json`."""
        return cls(
            case_runs=data["case_runs"],
            passed_runs=data["passed_runs"],
            success_rate=data["success_rate"],
            policy_violations=data["policy_violations"],
            median_cost_usd=Decimal(data["median_cost_usd"]),
            p95_latency_seconds=data["p95_latency_seconds"],
            judge_cost_usd=Decimal(data["judge_cost_usd"]),
            passed=data["passed"],
            errored_runs=data.get("errored_runs", 0),  # absent in summaries stored before
        )


def _usd(amount: Decimal) -> str:
    """Exact decimal text in fixed notation, no trailing zeros (``0.00012``, ``0``)."""
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile by nearest rank (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(
    outcomes: Sequence[tuple[bool, int, Decimal, float | None, Decimal]],
    thresholds: EvalThresholds,
    *,
    errored_runs: int = 0,
) -> Summary:
    """Summarize graded case runs against ``thresholds``.

    Args:
        outcomes: Per case run: ``(passed, policy_violations, cost_usd, latency_seconds,
            judge_cost_usd)``.
        thresholds: The suite's.
        errored_runs: How many of those case runs ended in a platform or provider error;
            any makes the eval not pass, whatever the thresholds.
    """
    runs = len(outcomes)
    passed_runs = sum(1 for o in outcomes if o[0])
    rate = passed_runs / runs if runs else 0.0
    violations = sum(o[1] for o in outcomes)
    median = Decimal(statistics.median([o[2] for o in outcomes])) if runs else Decimal(0)
    latency = p95([o[3] for o in outcomes if o[3] is not None])
    passed = (
        runs > 0
        and errored_runs == 0
        and rate >= thresholds.min_success_rate
        and violations <= thresholds.max_policy_violations
        and (thresholds.max_median_cost_usd is None or median <= thresholds.max_median_cost_usd)
        and (
            thresholds.max_p95_latency_seconds is None
            or (latency is not None and latency <= thresholds.max_p95_latency_seconds)
        )
    )
    return Summary(
        runs,
        passed_runs,
        rate,
        violations,
        median,
        latency,
        sum((o[4] for o in outcomes), Decimal(0)),
        passed,
        errored_runs,
    )


@dataclass(frozen=True)
class Interval:
    """A difference ``b - a`` of one statistic, with its 95% bootstrap interval."""

    delta: float
    low: float
    high: float


def bootstrap_delta(
    a: Sequence[float],
    b: Sequence[float],
    statistic: Callable[[Sequence[float]], float],
    *,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> Interval | None:
    """``statistic(b) - statistic(a)`` with a 95% percentile-bootstrap interval.

    Each side is resampled with replacement, independently, ``samples`` times from a
    ``random.Random(seed)``: the same inputs give the same interval. ``None`` when a side is
    empty.
    """
    if not a or not b:
        return None
    rng = random.Random(seed)
    deltas = sorted(
        statistic(rng.choices(b, k=len(b))) - statistic(rng.choices(a, k=len(a)))
        for _ in range(samples)
    )
    low = deltas[int(0.025 * (samples - 1))]
    high = deltas[math.ceil(0.975 * (samples - 1))]
    return Interval(statistic(b) - statistic(a), low, high)
