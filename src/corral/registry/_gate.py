"""The promotion gate: evals of the exact version digest, and manual-review conditions.

A promotion to a gated stage (settings ``governance.eval_gate_stages``, default ``staging``
and ``production``) needs, for every suite the agent's ``evaluation`` block names, a completed
eval of exactly the digest promoted that meets the block's thresholds (or, where the block
sets none, the suite's own). An agent without an ``evaluation`` block has no eval baseline and
cannot reach ``production`` unless ``governance.require_eval_for_production`` is off
(invariant 11).

The registry does not read eval results itself (the evals package sits above it): the caller
passes a lookup, :func:`corral.evals.latest_eval`. A gated promotion without one fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Agent, AgentSpec, EvaluationGate, SuiteGate
from corral.errors import Conflict
from corral.registry._tables import AgentVersionRow, StageBindingRow, ToolRow

__all__ = ["EvalBaseline", "EvalLookup", "GateResult", "check_gate"]

PRODUCTION = "production"
_RISK_ORDER = ("low", "medium", "high", "critical")


class EvalBaseline(Protocol):
    """What the gate reads of one completed eval (:class:`corral.evals.EvalResult`)."""

    @property
    def eval_id(self) -> str:
        """The eval run."""

    @property
    def passed(self) -> bool:
        """Whether the suite's own thresholds held."""

    @property
    def success_rate(self) -> float:
        """Share of case runs whose graders all passed (0..1)."""

    @property
    def policy_violations(self) -> int:
        """Tool calls denied by policy or needing approval."""

    @property
    def median_cost_usd(self) -> Decimal:
        """Median model cost of a case run, US dollars."""

    @property
    def p95_latency_seconds(self) -> float | None:
        """95th percentile case-run latency, seconds."""

    @property
    def errored_runs(self) -> int:
        """Case runs that ended in a provider or platform error (``model_error``...)."""


class EvalLookup(Protocol):
    """The latest completed eval of one agent digest on one suite (``corral.evals.latest_eval``)."""

    async def __call__(
        self, session: AsyncSession, agent: str, version_digest: str, suite: str, *, tenant_id: str
    ) -> EvalBaseline | None:
        """The eval, or ``None`` when the digest has no completed eval on the suite."""


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one promotion.

    Attributes:
        applies: Whether the stage is gated for this agent (``False``: nothing was checked).
        passed: Whether every named suite passed (``None`` when nothing was checked).
        score: The lowest success rate among the suites' evals (0..1; ``None``: none read).
        suites: Per suite: its eval id, observed values and failures (JSON-ready).
        review_reasons: The manual-review conditions the promotion matched.
    """

    applies: bool
    passed: bool | None
    score: float | None
    suites: list[dict[str, Any]] = field(default_factory=list)
    review_reasons: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """The result for the promotion's audit event."""
        return {
            "eval_gate": {
                "applies": self.applies,
                "passed": self.passed,
                "score": self.score,
                "suites": self.suites,
                "manual_review": self.review_reasons,
            }
        }


async def check_gate(
    session: AsyncSession,
    lookup: EvalLookup | None,
    *,
    tenant_id: str,
    agent_id: str,
    agent_name: str,
    version: str,
    digest: str,
    spec: AgentSpec,
    stage: str,
    gate_stages: Sequence[str],
    require_eval_for_production: bool,
) -> GateResult:
    """Check the gate for promoting ``agent_name@version`` (``digest``) to ``stage``.

    Returns:
        The result; passing, or not applying to the stage. Manual-review reasons are listed
        whenever the agent's block names conditions, gated stage or not.

    Raises:
        Conflict: ``eval_baseline_missing`` (production without an ``evaluation`` block),
            ``eval_gate_unavailable`` (no lookup given), ``eval_gate_failed`` (a suite without
            a passing eval of this digest; the message names the suite, threshold, observed
            value and the command to run).
    """
    gate = spec.evaluation
    if gate is None:
        if stage == PRODUCTION and stage in gate_stages and require_eval_for_production:
            raise Conflict(
                f"Agent {agent_name!r}@{version} has no 'evaluation' block, so it has no eval "
                "baseline and cannot be promoted to 'production'; add spec.evaluation.suites "
                f"and run `corral eval run SUITE --agent {agent_name}@{version}`, or set "
                "CORRAL_GOVERNANCE__REQUIRE_EVAL_FOR_PRODUCTION=false.",
                code="eval_baseline_missing",
            )
        return GateResult(applies=False, passed=None, score=None)
    reasons = await _review_reasons(session, gate, spec, tenant_id, agent_id, stage)
    if stage not in gate_stages:
        return GateResult(applies=False, passed=None, score=None, review_reasons=reasons)
    if lookup is None:
        raise Conflict(
            f"Stage {stage!r} needs a passing eval of agent {agent_name!r}@{version}, but this "
            "caller cannot read eval results; promote through the API or `corral promote`.",
            code="eval_gate_unavailable",
        )
    suites: list[dict[str, Any]] = []
    for suite_gate in gate.suites:
        found = await lookup(session, agent_name, digest, suite_gate.suite, tenant_id=tenant_id)
        suites.append(_judge_suite(suite_gate, found))
    failed = [s for s in suites if s["failures"]]
    if failed:
        runs = ", ".join(
            f"`corral eval run {s['suite']} --agent {agent_name}@{version}`" for s in failed
        )
        raise Conflict(
            f"Agent {agent_name!r}@{version} ({digest[:19]}) fails its eval gate for "
            f"{stage!r}: {'; '.join(f for s in failed for f in s['failures'])}. Fix the agent "
            f"and apply it, or run {runs} once it passes.",
            code="eval_gate_failed",
        )
    rates = [s["success_rate"] for s in suites]
    return GateResult(True, True, min(rates), suites, reasons)


def _judge_suite(gate: SuiteGate, found: EvalBaseline | None) -> dict[str, Any]:
    """One suite's observed values and failures (each naming threshold, value and the fix)."""
    if found is None:
        return {
            "suite": gate.suite,
            "eval_id": None,
            "success_rate": 0.0,
            "failures": [f"suite {gate.suite!r} has no completed eval of this digest"],
        }
    failures: list[str] = []
    if found.errored_runs:
        failures.append(
            f"{found.errored_runs} case run(s) ended in an error of the model provider or the "
            "platform (model_error, internal_error), so the eval shows nothing of those cases; "
            "see `corral get runs --status FAILED` and `corral describe run RUN`, fix the "
            "cause and run the eval again"
        )
    if gate.min_success_rate is not None and found.success_rate < gate.min_success_rate:
        failures.append(f"success rate {found.success_rate:.3f} < {gate.min_success_rate}")
    if found.policy_violations > gate.max_policy_violations:
        failures.append(
            f"policy violations {found.policy_violations} > {gate.max_policy_violations}"
        )
    if gate.max_median_cost_usd is not None and found.median_cost_usd > gate.max_median_cost_usd:
        failures.append(f"median cost ${found.median_cost_usd} > ${gate.max_median_cost_usd}")
    latency, bound = found.p95_latency_seconds, gate.max_p95_latency_seconds
    if bound is not None and latency is None:
        failures.append(f"p95 latency unknown (no case run started) where at most {bound}s")
    elif bound is not None and latency is not None and latency > bound:
        failures.append(f"p95 latency {latency}s > {bound}s")
    if gate.min_success_rate is None and not found.passed and not found.errored_runs:
        failures.append("the suite's own thresholds did not hold")
    return {
        "suite": gate.suite,
        "eval_id": found.eval_id,
        "success_rate": found.success_rate,
        "policy_violations": found.policy_violations,
        "median_cost_usd": str(found.median_cost_usd),
        "p95_latency_seconds": latency,
        "failures": [f"suite {gate.suite!r} eval {found.eval_id}: {f}" for f in failures],
    }


async def _review_reasons(
    session: AsyncSession,
    gate: EvaluationGate,
    spec: AgentSpec,
    tenant_id: str,
    agent_id: str,
    stage: str,
) -> list[str]:
    """The manual-review conditions matched against the version ``stage`` runs now."""
    when = gate.manual_review_required_if
    if not (
        when.tool_set_changed
        or when.write_tool_added
        or when.memory_writes_enabled
        or when.risk_tier_raised
    ):
        return []
    current = await _bound_spec(session, agent_id, stage)
    reasons: list[str] = []
    before_tools = (current.tools.allowed, current.tools.denied) if current else ([], [])
    if when.tool_set_changed and (spec.tools.allowed, spec.tools.denied) != before_tools:
        reasons.append("tool_set_changed")
    if when.write_tool_added and await _write_tools_added(session, tenant_id, spec, current):
        reasons.append("write_tool_added")
    if when.memory_writes_enabled and _writes_memory(spec) and not _writes_memory(current):
        reasons.append("memory_writes_enabled")
    if (
        when.risk_tier_raised
        and current is not None
        and _RISK_ORDER.index(spec.risk_tier) > _RISK_ORDER.index(current.risk_tier)
    ):
        reasons.append("risk_tier_raised")
    return reasons


async def _bound_spec(session: AsyncSession, agent_id: str, stage: str) -> AgentSpec | None:
    document = (
        await session.execute(
            select(AgentVersionRow.document)
            .join(StageBindingRow, StageBindingRow.version_id == AgentVersionRow.id)
            .where(StageBindingRow.agent_id == agent_id, StageBindingRow.stage == stage)
        )
    ).scalar_one_or_none()
    return None if document is None else Agent.model_validate(document).spec


def _writes_memory(spec: AgentSpec | None) -> bool:
    return spec is not None and any(m.access == "read_write" for m in spec.memory)


async def _write_tools_added(
    session: AsyncSession, tenant_id: str, spec: AgentSpec, current: AgentSpec | None
) -> bool:
    names = await session.scalars(
        select(ToolRow.name).where(
            ToolRow.tenant_id == tenant_id, ToolRow.side_effect.in_(("write", "destructive"))
        )
    )
    return any(
        spec.tools.permits(name) and (current is None or not current.tools.permits(name))
        for name in names
    )
