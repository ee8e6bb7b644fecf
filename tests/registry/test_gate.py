"""The promotion gate: evals of the exact digest, manual review, the agent.promote context."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import agent_document, register
from corral.audit._tables import AuditEventRow
from corral.contracts import EvalSuite, parse_document
from corral.errors import Conflict, ModelAPIError, PolicyRefused
from corral.evals import apply_suites, gateway_judge, grade_eval, latest_eval, start_eval
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.platform import Platform
from corral.registry import (
    EvalLookup,
    Promotion,
    TrafficSplitRow,
    bind_stage,
    get_agent_version,
    promote,
)
from corral.releases import RolloutPlan, RolloutRow, start_rollout
from corral.store import utcnow
from corral.testing import ScriptedModel

TENANT = "default"
ADMIN = "user:local-admin"
ROLES = ["admin", "builder", "operator", "approver", "platform-admin"]
GATE = {"suites": [{"suite": "qa", "min_success_rate": 1.0}]}


def suite_document() -> dict[str, Any]:
    cases = [
        {"name": "answers", "task": "What is the answer?", "expected": "42"},
        {"name": "greets", "task": "Say hello.", "expected": "hello"},
    ]
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "EvalSuite",
        "metadata": {"name": "qa"},
        "spec": {
            "agent": "repo-analyst",
            "cases": [{**c, "graders": [{"type": "exact"}]} for c in cases],
        },
    }


def model(request: ModelRequest) -> FinalAnswer:
    """Greets; answers 42, or 41 when its instructions say so."""
    task = next(m.content for m in request.messages if m.role == "user")
    if "hello" in task:
        return FinalAnswer("hello")
    return FinalAnswer("41" if "Say 41" in request.messages[0].content else "42")


async def setup(make_platform: Any, respond: Any = model) -> Platform:
    platform: Platform = await make_platform(scripted=ScriptedModel(respond))
    suite = parse_document(suite_document())
    assert isinstance(suite, EvalSuite)
    async with platform.store.transaction(TENANT) as session:
        await apply_suites(session, [suite], tenant_id=TENANT, actor="user:test")
    return platform


async def evaluate(platform: Platform, version: str, workspace: Path) -> bool:
    row = await start_eval(
        platform.store,
        tenant_id=TENANT,
        suite="qa",
        agent="repo-analyst",
        version=version,
        requested_by="user:test",
        requester_roles=["builder"],
        workspaces=platform.workspaces,
        governance=platform.governance,
        workspace=str(workspace),
    )
    await platform.worker.run_until_idle()
    judge = gateway_judge(
        platform.models,
        TENANT,
        governance=platform.governance,
        store=platform.store,
        principal="user:test",
    )
    report = await grade_eval(
        platform.store, row.id, tenant_id=TENANT, actor="user:test", judge=judge
    )
    assert report.run.status == "completed"
    return bool(report.run.passed)


async def pending_promotion_event(platform: Platform) -> AuditEventRow:
    """The one ``agent.promote`` audit event of a promotion waiting for approval."""
    async with platform.store.read(TENANT) as session:
        return (
            await session.scalars(
                select(AuditEventRow).where(
                    AuditEventRow.action == "agent.promote",
                    AuditEventRow.outcome == "pending_approval",
                )
            )
        ).one()


async def promote_to(platform: Platform, version: str, stage: str, **options: Any) -> Promotion:
    async with platform.store.transaction(TENANT) as session:
        return await promote(
            session,
            platform.governance,
            tenant_id=TENANT,
            actor=ADMIN,
            agent_name="repo-analyst",
            version=version,
            stage=stage,
            actor_roles=ROLES,
            **{"evals": latest_eval, **options},
        )


async def test_a_failing_version_cannot_be_promoted_until_a_passing_eval_of_its_digest(
    make_platform, workspace: Path
) -> None:
    platform = await setup(make_platform)
    await register(platform, agent_document(instructions="Say 41.", evaluation=GATE))

    with pytest.raises(Conflict) as no_eval:
        await promote_to(platform, "0.1.0", "staging")
    assert no_eval.value.code == "eval_gate_failed"
    assert "suite 'qa' has no completed eval of this digest" in no_eval.value.message
    assert "`corral eval run qa --agent repo-analyst@0.1.0`" in no_eval.value.message

    assert await evaluate(platform, "0.1.0", workspace) is False
    with pytest.raises(Conflict) as failing:
        await promote_to(platform, "0.1.0", "staging")
    assert "success rate 0.500 < 1.0" in failing.value.message, failing.value.message

    # The fix is a new version: its digest has no eval yet, whatever 0.1.0's evals say.
    await register(platform, agent_document(instructions="Answer.", evaluation=GATE))
    with pytest.raises(Conflict, match="no completed eval of this digest"):
        await promote_to(platform, "0.1.1", "staging")
    assert await evaluate(platform, "0.1.1", workspace) is True
    promotion = await promote_to(platform, "0.1.1", "staging")
    assert (promotion.status, promotion.version) == ("done", "0.1.1")

    async with platform.store.read(TENANT) as session:
        event = (
            await session.scalars(
                select(AuditEventRow).where(AuditEventRow.action == "agent.promoted")
            )
        ).one()
    gate = event.details["eval_gate"]
    assert (gate["passed"], gate["score"], gate["suites"][0]["suite"]) == (True, 1.0, "qa")
    assert gate["suites"][0]["eval_id"].startswith("eval")


@dataclass(frozen=True)
class Baseline:
    """A completed eval as the gate reads it (an :class:`corral.registry.EvalBaseline`)."""

    eval_id: str = "eval_given"
    passed: bool = True
    success_rate: float = 1.0
    policy_violations: int = 0
    median_cost_usd: Decimal = Decimal("0.002")
    p95_latency_seconds: float | None = 4.0
    errored_runs: int = 0


@pytest.mark.parametrize(
    ("observed", "failure"),
    [
        ({"success_rate": 0.85}, "success rate 0.850 < 0.9"),
        ({"policy_violations": 1}, "policy violations 1 > 0"),
        ({"median_cost_usd": Decimal("0.011")}, "median cost $0.011 > $0.01"),
        ({"p95_latency_seconds": 12.5}, "p95 latency 12.5s > 10.0s"),
        (
            {"p95_latency_seconds": None},
            "p95 latency unknown (no case run started) where at most 10.0s",
        ),
        ({"errored_runs": 2}, "2 case run(s) ended in an error of the model provider"),
    ],
    ids=[
        "success_rate",
        "policy_violations",
        "median_cost",
        "p95_latency",
        "no_latency",
        "errored",
    ],
)
async def test_each_gate_threshold_refuses_a_promotion(
    make_platform, observed: dict[str, Any], failure: str
) -> None:
    platform = await setup(make_platform)
    thresholds = {"min_success_rate": 0.9, "max_median_cost_usd": "0.01"}
    gate = {"suites": [{"suite": "qa", **thresholds, "max_p95_latency_seconds": 10}]}
    await register(platform, agent_document(evaluation=gate))

    def given(**values: Any) -> EvalLookup:
        async def lookup(*_: Any, tenant_id: str) -> Baseline:
            return Baseline(**values)

        return lookup

    with pytest.raises(Conflict) as refused:
        await promote_to(platform, "0.1.0", "staging", evals=given(**observed))
    assert refused.value.code == "eval_gate_failed"
    assert failure in refused.value.message, refused.value.message
    # The same version with every threshold met (each at its limit) is promoted.
    at_limit = {"success_rate": 0.9, "median_cost_usd": Decimal("0.01"), "p95_latency_seconds": 10}
    promotion = await promote_to(platform, "0.1.0", "staging", evals=given(**at_limit))
    assert promotion.status == "done"


async def test_production_needs_an_eval_baseline_unless_the_setting_allows_it(
    make_platform,
) -> None:
    platform = await setup(make_platform)
    await register(platform, agent_document())
    with pytest.raises(Conflict) as refused:
        await promote_to(platform, "0.1.0", "production")
    assert refused.value.code == "eval_baseline_missing"
    assert "CORRAL_GOVERNANCE__REQUIRE_EVAL_FOR_PRODUCTION" in refused.value.message
    # staging has no baseline rule for agents without a gate.
    assert (await promote_to(platform, "0.1.0", "staging")).status == "done"
    allowed = await promote_to(platform, "0.1.0", "production", require_eval_for_production=False)
    assert allowed.status == "pending_approval"  # the default production approval policy


async def test_a_gated_promotion_without_an_eval_reader_fails_closed(make_platform) -> None:
    platform = await setup(make_platform)
    await register(platform, agent_document(evaluation=GATE))
    with pytest.raises(Conflict) as refused:
        await promote_to(platform, "0.1.0", "staging", evals=None)
    assert refused.value.code == "eval_gate_unavailable"


async def test_manual_review_conditions_add_an_approval(make_platform, workspace: Path) -> None:
    platform = await setup(make_platform)
    await register(platform, agent_document(instructions="Answer.", evaluation=GATE))
    assert await evaluate(platform, "0.1.0", workspace)
    assert (await promote_to(platform, "0.1.0", "staging")).status == "done"

    review = {"tool_set_changed": True, "risk_tier_raised": True}
    gate = {**GATE, "manual_review_required_if": review}
    # Same tools, risk tier lowered: no condition matches, so no approval is asked.
    await register(
        platform, agent_document(instructions="Answer!", evaluation=gate, risk_tier="low")
    )
    assert await evaluate(platform, "0.1.1", workspace)
    assert (await promote_to(platform, "0.1.1", "staging")).status == "done"

    changed = agent_document(
        instructions="Answer!",
        evaluation=gate,
        risk_tier="high",
        tools={"allowed": ["fs.*", "notes.*"]},
    )
    await register(platform, changed)
    assert await evaluate(platform, "0.1.2", workspace)
    pending = await promote_to(platform, "0.1.2", "staging")
    assert pending.status == "pending_approval" and pending.approval_id is not None
    assert (pending.approver_roles, pending.required_approvals) == (("approver",), 1)
    event = await pending_promotion_event(platform)
    assert event.details["eval_gate"]["manual_review"] == ["tool_set_changed", "risk_tier_raised"]
    assert event.details["approval_id"] == pending.approval_id


NOTES_TOOL = {
    "apiVersion": "corral.dev/v1",
    "kind": "Tool",
    "metadata": {"name": "notes.append"},
    "spec": {
        "description": "Append a note.",
        "type": "http",
        "side_effect": "write",
        "http": {"url": "https://notes.example.com/"},
    },
}


@pytest.mark.parametrize(
    ("condition", "change"),
    [
        ("write_tool_added", {"tools": {"allowed": ["fs.*", "notes.*"]}}),
        ("memory_writes_enabled", {"memory": [{"name": "notes", "access": "read_write"}]}),
    ],
)
async def test_a_write_tool_or_memory_writes_added_need_a_review(
    make_platform, workspace: Path, condition: str, change: dict[str, Any]
) -> None:
    platform = await setup(make_platform)
    review = {"write_tool_added": True, "memory_writes_enabled": True}
    gate = {**GATE, "manual_review_required_if": review}
    # Read-only tools and read-only memory: neither condition matches, staging binds at once
    # (the registered write tool is not among the tools this version may call).
    base = {"instructions": "Answer.", "evaluation": gate, "memory": [{"name": "notes"}]}
    await register(platform, NOTES_TOOL, agent_document(**base))
    assert await evaluate(platform, "0.1.0", workspace)
    assert (await promote_to(platform, "0.1.0", "staging")).status == "done"

    await register(platform, agent_document(**{**base, **change}))
    assert await evaluate(platform, "0.1.1", workspace)
    pending = await promote_to(platform, "0.1.1", "staging")
    assert pending.status == "pending_approval" and pending.approval_id is not None
    event = await pending_promotion_event(platform)
    assert event.details["eval_gate"]["manual_review"] == [condition]


async def test_eval_score_reaches_the_agent_promote_policy_context(
    make_platform, workspace: Path
) -> None:
    platform = await setup(make_platform)
    await register(
        platform,
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Policy",
            "metadata": {"name": "promote-only-perfect"},
            "spec": {
                "description": "Staging takes only versions whose evals all passed fully.",
                "cedar": (
                    '@id("promote-only-perfect")\n'
                    'forbid (principal, action == Action::"agent.promote", resource)\n'
                    'when { context.stage == "staging" && context has eval_score && '
                    'context.eval_score.lessThan(decimal("1.0")) };'
                ),
            },
        },
    )
    platform.governance.invalidate(TENANT)
    lenient = {"suites": [{"suite": "qa", "min_success_rate": 0.5}]}
    await register(platform, agent_document(instructions="Say 41.", evaluation=lenient))
    assert await evaluate(platform, "0.1.0", workspace) is False  # the suite's own bar: 1.0
    with pytest.raises(PolicyRefused, match="promote-only-perfect"):
        await promote_to(platform, "0.1.0", "staging")


async def bound_baseline(platform: Platform, *stages: str, **document: Any) -> None:
    """Register the baseline version (``agent_document(**document)``) and bind ``stages`` to it."""
    await register(platform, agent_document(**document))
    async with platform.store.transaction(TENANT) as session:
        agent, baseline = await get_agent_version(session, "repo-analyst", tenant_id=TENANT)
        for stage in stages:
            await bind_stage(session, agent, baseline, stage, actor=ADMIN, tenant_id=TENANT)


async def start_gated_rollout(
    platform: Platform, version: str, stage: str = "production", **options: Any
) -> Any:
    async with platform.store.transaction(TENANT) as session:
        return await start_rollout(
            session,
            RolloutPlan(agent_name="repo-analyst", version=version, stage=stage, shadow=True),
            tenant_id=TENANT,
            actor=ADMIN,
            actor_roles=ROLES,
            now=utcnow(),
            **{"evals": latest_eval, "require_eval_for_production": True, **options},
        )


async def test_a_production_rollout_runs_the_eval_gate_before_any_traffic(
    make_platform, workspace: Path
) -> None:
    platform = await setup(make_platform)
    await bound_baseline(platform, "production", instructions="Answer.", evaluation=GATE)

    await register(platform, agent_document(instructions="Say 41.", evaluation=GATE))
    with pytest.raises(Conflict) as no_eval:
        await start_gated_rollout(platform, "0.1.1")
    assert no_eval.value.code == "eval_gate_failed"
    assert "`corral eval run qa --agent repo-analyst@0.1.1`" in no_eval.value.message
    assert await evaluate(platform, "0.1.1", workspace) is False
    with pytest.raises(Conflict) as failing:
        await start_gated_rollout(platform, "0.1.1")
    assert failing.value.code == "eval_gate_failed"
    assert "success rate 0.500 < 1.0" in failing.value.message
    with pytest.raises(Conflict) as unreadable:
        await start_gated_rollout(platform, "0.1.1", evals=None)
    assert unreadable.value.code == "eval_gate_unavailable"

    await register(platform, agent_document(instructions="No gate."))
    with pytest.raises(Conflict) as baseline_missing:
        await start_gated_rollout(platform, "0.1.2")
    assert baseline_missing.value.code == "eval_baseline_missing"

    # Nothing was split: production's new runs all get the bound version, no shadow copies.
    async with platform.store.read(TENANT) as session:
        assert (await session.scalars(select(RolloutRow))).all() == []
        assert (await session.scalars(select(TrafficSplitRow))).all() == []

    await register(platform, agent_document(instructions="Answer well.", evaluation=GATE))
    assert await evaluate(platform, "0.1.3", workspace) is True
    rollout = await start_gated_rollout(platform, "0.1.3")
    assert (rollout.status, rollout.candidate_version, rollout.steps[0]) == ("running", "0.1.3", 0)


async def test_a_production_rollout_is_not_eval_gated_when_the_setting_is_off(
    make_platform,
) -> None:
    platform = await setup(make_platform)
    await bound_baseline(platform, "production", instructions="Answer.")
    await register(platform, agent_document(instructions="Answer!"))
    with pytest.raises(Conflict, match="no 'evaluation' block"):
        await start_gated_rollout(platform, "0.1.1")
    rollout = await start_gated_rollout(platform, "0.1.1", require_eval_for_production=False)
    assert rollout.status == "running"


async def test_a_staging_rollout_runs_the_eval_gate_at_start_and_an_ungated_stage_does_not(
    make_platform, workspace: Path
) -> None:
    platform = await setup(make_platform)
    await bound_baseline(platform, "staging", "canary-lab", instructions="Answer.", evaluation=GATE)

    await register(platform, agent_document(instructions="Say 41.", evaluation=GATE))
    assert await evaluate(platform, "0.1.1", workspace) is False
    with pytest.raises(Conflict) as failing:
        await start_gated_rollout(platform, "0.1.1", stage="staging")
    assert failing.value.code == "eval_gate_failed"
    assert "'staging'" in failing.value.message
    async with platform.store.read(TENANT) as session:
        assert (await session.scalars(select(RolloutRow))).all() == []

    # A stage outside governance.eval_gate_stages is not gated, at start or at 100 %.
    rollout = await start_gated_rollout(platform, "0.1.1", stage="canary-lab")
    assert (rollout.status, rollout.stage) == ("running", "canary-lab")


async def test_an_eval_with_an_errored_case_run_is_no_baseline(
    make_platform, workspace: Path
) -> None:
    def provider_down(request: ModelRequest) -> FinalAnswer:
        if any("hello" in m.content for m in request.messages if m.role == "user"):
            raise ModelAPIError("upstream returned 503", provider="scripted", status_code=503)
        return model(request)

    platform = await setup(make_platform, provider_down)
    # Only policy violations are gated: the errored run alone must refuse the promotion.
    gate = {"suites": [{"suite": "qa", "max_policy_violations": 0}]}
    await register(platform, agent_document(instructions="Answer.", evaluation=gate))
    assert await evaluate(platform, "0.1.0", workspace) is False
    with pytest.raises(Conflict) as refused:
        await promote_to(platform, "0.1.0", "staging")
    assert refused.value.code == "eval_gate_failed"
    assert "1 case run(s) ended in an error of the model provider" in refused.value.message
