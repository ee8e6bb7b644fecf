"""What the promotion gate and ``corral eval compare`` read: evals of exact agent digests."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import NotFound
from corral.evals._metrics import Interval, Summary, bootstrap_delta, p95
from corral.evals._service import EvalReport, get_eval
from corral.evals._tables import EvalCaseResultRow, EvalRunRow
from corral.registry import get_agent_version

__all__ = ["CaseDelta", "Comparison", "EvalResult", "compare_versions", "latest_eval"]


@dataclass(frozen=True)
class EvalResult:
    """The latest completed eval of one agent digest on one suite (what a gate reads).

    Attributes:
        eval_id: The eval run.
        suite: Suite name; ``suite_version`` the version that ran.
        agent: Agent name; ``agent_version`` and ``agent_digest`` the version evaluated.
        passed: Whether the suite's thresholds held.
        success_rate: Share of case runs whose graders all passed (0..1).
        policy_violations: Tool calls denied by policy or needing an approval.
        median_cost_usd: Median model cost of a case run, US dollars.
        p95_latency_seconds: 95th percentile run latency, seconds (``None``: no run started).
        finished_at: When grading completed.
        errored_runs: Case runs that ended in a provider or platform error (an eval with any
            did not pass).
    """

    eval_id: str
    suite: str
    suite_version: str
    agent: str
    agent_version: str
    agent_digest: str
    passed: bool
    success_rate: float
    policy_violations: int
    median_cost_usd: Decimal
    p95_latency_seconds: float | None
    finished_at: datetime | None
    errored_runs: int = 0


async def latest_eval(
    session: AsyncSession, agent: str, version_digest: str, suite: str, *, tenant_id: str
) -> EvalResult | None:
    """The latest completed eval of exactly ``version_digest`` of ``agent`` on ``suite``.

    Bound to the digest, not the version number: a changed agent needs a new eval.

    Returns:
        The result, or ``None`` when that digest has no completed eval on the suite.
    """
    row = (
        await session.execute(
            select(EvalRunRow)
            .where(
                EvalRunRow.tenant_id == tenant_id,
                EvalRunRow.agent_name == agent,
                EvalRunRow.agent_digest == version_digest,
                EvalRunRow.suite_name == suite,
                EvalRunRow.status == "completed",
            )
            .order_by(EvalRunRow.finished_at.desc(), EvalRunRow.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if row is None or row.summary is None:
        return None
    summary = Summary.from_json(row.summary)
    return EvalResult(
        eval_id=row.id,
        suite=row.suite_name,
        suite_version=row.suite_version,
        agent=row.agent_name,
        agent_version=row.agent_version,
        agent_digest=row.agent_digest,
        passed=bool(row.passed),
        success_rate=summary.success_rate,
        policy_violations=summary.policy_violations,
        median_cost_usd=summary.median_cost_usd,
        p95_latency_seconds=summary.p95_latency_seconds,
        finished_at=row.finished_at,
        errored_runs=summary.errored_runs,
    )


@dataclass(frozen=True)
class CaseDelta:
    """One case in both evals: its pass rates (0..1) and whether ``b`` regressed."""

    case: str
    a_pass_rate: float | None
    b_pass_rate: float | None

    @property
    def regression(self) -> bool:
        """``b`` passes the case less often than ``a``."""
        return (
            self.a_pass_rate is not None
            and self.b_pass_rate is not None
            and self.b_pass_rate < self.a_pass_rate
        )


@dataclass(frozen=True)
class Comparison:
    """Version ``b`` against version ``a`` on one suite: per case, and metric deltas ``b - a``.

    Each delta carries a 95% bootstrap interval over case runs (``None``: a side had none).
    """

    suite: str
    a_eval_id: str
    b_eval_id: str
    cases: list[CaseDelta]
    success_rate: Interval | None
    median_cost_usd: Interval | None
    p95_latency_seconds: Interval | None


async def _latest_of_version(
    session: AsyncSession, agent: str, version: str, suite: str, tenant_id: str
) -> str:
    _, row = await get_agent_version(session, agent, version, tenant_id=tenant_id)
    result = await latest_eval(session, agent, row.digest, suite, tenant_id=tenant_id)
    if result is None:
        raise NotFound(
            f"Agent {agent}@{version} ({row.digest[:19]}) has no completed eval on suite "
            f"{suite!r}; run `corral eval run {suite} --agent {agent}@{version}` first.",
            kind="eval",
            name=f"{agent}@{version}:{suite}",
        )
    return result.eval_id


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _p95(values: Sequence[float]) -> float:
    return p95(values) or 0.0


async def compare_versions(
    session: AsyncSession, agent: str, version_a: str, version_b: str, suite: str, *, tenant_id: str
) -> Comparison:
    """Compare the latest completed evals of two versions of ``agent`` on ``suite``.

    Raises:
        NotFound: unknown agent or version, or a version without a completed eval.
    """
    a_id = await _latest_of_version(session, agent, version_a, suite, tenant_id)
    b_id = await _latest_of_version(session, agent, version_b, suite, tenant_id)
    a = await get_eval(session, a_id, tenant_id=tenant_id)
    b = await get_eval(session, b_id, tenant_id=tenant_id)

    def rates(cases: Sequence[EvalCaseResultRow]) -> dict[str, float]:
        by_case: dict[str, list[bool]] = {}
        for c in cases:
            by_case.setdefault(c.case_name, []).append(bool(c.passed))
        return {name: sum(v) / len(v) for name, v in by_case.items()}

    a_rates, b_rates = rates(a.cases), rates(b.cases)
    deltas = [
        CaseDelta(name, a_rates.get(name), b_rates.get(name))
        for name in sorted(a_rates.keys() | b_rates.keys())
    ]

    def column(report: EvalReport, attribute: str) -> list[float]:
        values = [getattr(c, attribute) for c in report.cases]
        return [float(v) for v in values if v is not None]

    def passed(report: EvalReport) -> list[float]:
        return [1.0 if c.passed else 0.0 for c in report.cases]

    return Comparison(
        suite=suite,
        a_eval_id=a_id,
        b_eval_id=b_id,
        cases=deltas,
        success_rate=bootstrap_delta(passed(a), passed(b), statistics.fmean),
        median_cost_usd=bootstrap_delta(column(a, "cost_usd"), column(b, "cost_usd"), _median),
        p95_latency_seconds=bootstrap_delta(
            column(a, "latency_seconds"), column(b, "latency_seconds"), _p95
        ),
    )
