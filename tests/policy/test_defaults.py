"""The shipped default policy set, decision by decision."""

from __future__ import annotations

import pytest
from _policy_world import ALICE, BOT, agent, model, request, tool, user

from corral.policy import DEFAULT_POLICIES, PolicyEngine


@pytest.fixture(scope="module")
def defaults() -> PolicyEngine:
    return PolicyEngine(DEFAULT_POLICIES)


READ = tool("fs.read_file", "read")
WRITE = tool("fs.write_file", "write")
DESTROY = tool("db.drop_table", "destructive")
FOREIGN = tool("fs.read_file@globex", "read", tenant="globex")


def test_every_default_policy_has_a_reason(defaults: PolicyEngine) -> None:
    assert len(defaults.policies) == 13
    assert all(policy.reason for policy in defaults.policies.values())


@pytest.mark.parametrize("stage", ["dev", "staging", "production"])
def test_a_read_tool_is_allowed_in_the_tenant(defaults: PolicyEngine, stage: str) -> None:
    decision = defaults.evaluate(request(READ.uid, stage=stage), [agent(), READ])
    assert decision.decision == "allow"
    assert decision.determining_policies == ["tool-read-in-tenant"]


def test_a_tool_of_another_tenant_is_denied(defaults: PolicyEngine) -> None:
    decision = defaults.evaluate(request(FOREIGN.uid), [agent(), FOREIGN])
    assert decision.decision == "deny"
    assert decision.determining_policies == ["tenant-boundary"]


def test_acting_in_another_tenants_context_is_denied(defaults: PolicyEngine) -> None:
    decision = defaults.evaluate(request(READ.uid, tenant="globex"), [agent(), READ])
    assert decision.decision == "deny"
    assert decision.determining_policies == ["tenant-boundary"]


def test_a_write_tool_in_dev_is_allowed(defaults: PolicyEngine) -> None:
    decision = defaults.evaluate(request(WRITE.uid, stage="dev"), [agent(), WRITE])
    assert decision.decision == "allow"
    assert decision.determining_policies == ["tool-write-in-tenant"]


@pytest.mark.parametrize("stage", ["staging", "production"])
def test_a_write_tool_outside_dev_needs_an_approver(defaults: PolicyEngine, stage: str) -> None:
    decision = defaults.evaluate(request(WRITE.uid, stage=stage), [agent(), WRITE])
    assert decision.decision == "require_approval"
    assert decision.determining_policies == ["tool-write-needs-approval"]
    assert decision.approver_roles == ["approver"]
    assert decision.required_approvals == 1
    approved = defaults.evaluate(
        request(WRITE.uid, stage=stage),
        [agent(), WRITE],
        approvals_granted=decision.determining_policies,
    )
    assert approved.decision == "allow"


def test_an_eval_run_without_a_sandbox_may_only_read(defaults: PolicyEngine) -> None:
    assert defaults.evaluate(request(READ.uid, stage="eval"), [agent(), READ]).decision == "allow"
    for side_effect in (WRITE, DESTROY):
        decision = defaults.evaluate(request(side_effect.uid, stage="eval"), [agent(), side_effect])
        assert decision.decision == "deny"
        assert "tool-side-effect-in-eval" in decision.determining_policies


def test_a_write_tool_in_an_eval_sandbox_is_allowed(defaults: PolicyEngine) -> None:
    decision = defaults.evaluate(request(WRITE.uid, stage="eval-sandbox"), [agent(), WRITE])
    assert decision.decision == "allow"


def test_a_write_tool_of_another_tenant_is_denied_not_asked(defaults: PolicyEngine) -> None:
    foreign_write = tool("fs.write_file", "write", tenant="globex")
    decision = defaults.evaluate(request(foreign_write.uid), [agent(), foreign_write])
    assert decision.decision == "deny"
    assert decision.approver_roles == []


@pytest.mark.parametrize("stage", ["dev", "production"])
def test_a_destructive_tool_is_denied(defaults: PolicyEngine, stage: str) -> None:
    decision = defaults.evaluate(request(DESTROY.uid, stage=stage), [agent(), DESTROY])
    assert decision.decision == "deny"
    assert decision.determining_policies == ["tool-destructive-not-allowed"]
    # Approving would not help: it stays denied even with the approval granted.
    approved = defaults.evaluate(
        request(DESTROY.uid, stage=stage),
        [agent(), DESTROY],
        approvals_granted=["tool-destructive-needs-approval"],
    )
    assert approved.decision == "deny"


def test_an_explicitly_allowed_destructive_tool_needs_approval(defaults: PolicyEngine) -> None:
    req = request(DESTROY.uid, stage="dev", destructive_allowed=True)
    decision = defaults.evaluate(req, [agent(), DESTROY])
    assert decision.decision == "require_approval"
    assert decision.determining_policies == ["tool-destructive-needs-approval"]
    assert decision.approver_roles == ["approver"]


def test_an_unknown_side_effect_is_denied_by_default(defaults: PolicyEngine) -> None:
    odd = tool("odd", "sideways")
    decision = defaults.evaluate(request(odd.uid), [agent(), odd])
    assert decision.decision == "deny"
    assert decision.determining_policies == []


def test_invoking_an_agent_of_the_tenant_is_allowed(defaults: PolicyEngine) -> None:
    target = agent("triage")
    req = request(target.uid, principal=ALICE, action="agent.invoke")
    decision = defaults.evaluate(req, [user(), target])
    assert decision.decision == "allow"
    assert decision.determining_policies == ["agent-invoke-in-tenant"]


def test_invoking_a_retired_agent_is_denied(defaults: PolicyEngine) -> None:
    target = agent("triage", status="retired")
    req = request(target.uid, principal=ALICE, action="agent.invoke")
    decision = defaults.evaluate(req, [user(), target])
    assert decision.decision == "deny"
    assert decision.determining_policies == ["agent-invoke-retired"]


def test_a_model_call_is_allowed(defaults: PolicyEngine) -> None:
    req = request(model().uid, action="model.call")
    assert defaults.evaluate(req, [agent(), model()]).decision == "allow"


def test_memory_writes_are_denied_without_a_policy(defaults: PolicyEngine) -> None:
    from corral.policy import Entity, EntityRef

    scope = Entity(EntityRef("Namespace", "notes"), {"tenant": "acme"})
    decision = defaults.evaluate(request(scope.uid, action="memory.write"), [agent(), scope])
    assert decision.decision == "deny"
    assert "default deny" in decision.reasons[0]


def test_promotion_to_production_needs_two_platform_admins(defaults: PolicyEngine) -> None:
    builder = user(roles=("builder",))
    req = request(BOT, principal=ALICE, action="agent.promote", stage="production")
    decision = defaults.evaluate(req, [builder, agent()])
    assert decision.decision == "require_approval"
    assert decision.determining_policies == ["agent-promote-production-approval"]
    assert decision.approver_roles == ["platform-admin"]
    assert decision.required_approvals == 2


def test_promotion_to_staging_needs_no_approval(defaults: PolicyEngine) -> None:
    builder = user(roles=("builder",))
    req = request(BOT, principal=ALICE, action="agent.promote", stage="staging")
    decision = defaults.evaluate(req, [builder, agent()])
    assert decision.decision == "allow"
    assert decision.determining_policies == ["agent-promote-in-tenant"]


def test_a_viewer_cannot_promote(defaults: PolicyEngine) -> None:
    viewer = user(roles=("viewer",))
    req = request(BOT, principal=ALICE, action="agent.promote", stage="production")
    decision = defaults.evaluate(req, [viewer, agent()])
    # Nobody is asked to approve a promotion that would be denied anyway.
    assert decision.decision == "deny"
    assert decision.approver_roles == []


@pytest.mark.parametrize("effect", ["write", "destructive"])
def test_a_shadow_run_may_call_read_only_tools_only(defaults: PolicyEngine, effect: str) -> None:
    side_effecting = tool("fs.write_file", effect)
    for granted in ([], ["tool-write-needs-approval", "tool-destructive-needs-approval"]):
        decision = defaults.evaluate(
            request(side_effecting.uid, stage="shadow", destructive_allowed=True),
            [agent(), side_effecting],
            approvals_granted=granted,
        )
        assert decision.decision == "deny"  # no approval can let a shadow copy write
        assert "tool-shadow-read-only" in decision.determining_policies
    read = defaults.evaluate(request(READ.uid, stage="shadow"), [agent(), READ])
    assert read.decision == "allow"
