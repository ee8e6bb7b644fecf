"""Table-driven policy tests (``corral policy test``) and ``corral policy explain``."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from _policy_world import agent, request, tool

from corral.errors import InvalidContract
from corral.policy import (
    DEFAULT_POLICIES,
    EntityRef,
    PolicyEngine,
    explain,
    load_cases,
    run_cases,
)

CASES = """\
context:
  tenant: acme
  requester: alice
entities:
  - uid: Agent::support-bot
    attrs: {tenant: acme, owner: ops, risk_tier: low, status: active}
  - uid: Tool::"fs.write_file"
    attrs: {tenant: acme, owner: ops, side_effect: write, risk: low, kind: builtin}
cases:
  - name: writes in dev are allowed
    principal: Agent::support-bot
    action: tool.call
    resource: Tool::fs.write_file
    context: {stage: dev}
    expect: allow
  - name: writes in production need an approver
    principal: {type: Agent, id: support-bot}
    action: tool.call
    resource: Tool::fs.write_file
    context: {stage: production, estimated_cost_usd: "0.25", arguments: {path: a.txt}}
    expect:
      decision: require_approval
      determining_policies: [tool-write-needs-approval]
      approver_roles: [approver]
      required_approvals: 1
      constraints: {}
  - name: approved writes are allowed
    principal: Agent::support-bot
    action: tool.call
    resource: Tool::fs.write_file
    context: {stage: production}
    approvals_granted: [tool-write-needs-approval]
    expect: allow
  - name: a foreign tool is denied
    principal: Agent::support-bot
    action: tool.call
    resource: Tool::fs.write_file
    context: {stage: dev}
    entities:
      - uid: Tool::fs.write_file
        attrs: {tenant: globex, owner: ops, side_effect: write, risk: low, kind: builtin}
    expect: {decision: deny, determining_policies: [tenant-boundary]}
"""


@pytest.fixture(scope="module")
def defaults() -> PolicyEngine:
    return PolicyEngine(DEFAULT_POLICIES)


def test_cases_load_from_text(defaults: PolicyEngine) -> None:
    cases = load_cases(CASES)
    assert [case.name for case in cases][:2] == [
        "writes in dev are allowed",
        "writes in production need an approver",
    ]
    second = cases[1]
    assert second.request.principal == EntityRef("Agent", "support-bot")
    assert second.request.context.tenant == "acme"
    assert second.request.context.estimated_cost_usd == Decimal("0.25")
    assert second.expect.required_approvals == 1
    # The case's own entity replaces the shared one with the same uid.
    [foreign] = [e for e in cases[3].entities if e.uid == EntityRef("Tool", "fs.write_file")]
    assert foreign.attrs["tenant"] == "globex"


def test_cases_load_from_a_path_and_pass(defaults: PolicyEngine, tmp_path: Path) -> None:
    path = tmp_path / "policy-tests.yaml"
    path.write_text(CASES, encoding="utf-8")
    results = run_cases(defaults, load_cases(path))
    assert [result.passed for result in results] == [True, True, True, True]
    assert all(result.mismatches == () for result in results)


def test_a_wrong_expectation_is_reported_as_failed(defaults: PolicyEngine) -> None:
    wrong = CASES.replace("    expect: allow\n", "    expect: deny\n", 1).replace(
        "required_approvals: 1", "required_approvals: 2"
    )
    results = run_cases(defaults, load_cases(wrong))
    assert [result.passed for result in results] == [False, False, True, True]
    [decision_line] = results[0].mismatches
    assert decision_line.startswith("decision: expected 'deny', got 'allow'")
    assert "within the tenant" in decision_line
    assert results[1].mismatches == ("required_approvals: expected 2, got 1",)


def test_a_wrong_determining_policy_is_reported(defaults: PolicyEngine) -> None:
    wrong = CASES.replace("determining_policies: [tenant-boundary]", "determining_policies: [x]")
    result = run_cases(defaults, load_cases(wrong))[3]
    assert not result.passed
    assert result.mismatches == ("determining_policies: expected ['x'], got ['tenant-boundary']",)


def test_invalid_yaml_is_reported_with_its_line() -> None:
    with pytest.raises(InvalidContract) as caught:
        load_cases("cases:\n  - name: [unclosed\n")
    [issue] = caught.value.issues
    assert issue.message.startswith("invalid YAML")
    assert issue.line is not None


def test_invalid_fields_are_reported_with_path_and_line() -> None:
    text = CASES.replace("    action: tool.call\n", "    action: tool.smash\n", 1).replace(
        "    expect: allow\n", "    expect: maybe\n    colour: red\n", 1
    )
    with pytest.raises(InvalidContract) as caught:
        load_cases(text)
    found = {(issue.path, issue.line) for issue in caught.value.issues}
    assert found == {
        ("cases[0].action", 12),
        ("cases[0].expect.decision", 15),
        ("cases[0].colour", 16),
    }
    [unknown] = [issue for issue in caught.value.issues if issue.path == "cases[0].colour"]
    assert unknown.message.startswith("unknown field")


def test_entity_uids_and_attributes_are_checked() -> None:
    text = CASES.replace("Agent::support-bot\n    attrs", "support-bot\n    attrs", 1)
    text = text.replace("risk: low, kind: builtin}\ncases", "risk: 0.5, kind: builtin}\ncases")
    with pytest.raises(InvalidContract) as caught:
        load_cases(text)
    messages = " ".join(issue.message for issue in caught.value.issues)
    assert "not an entity uid" in messages
    assert "no Cedar type" in messages


def test_case_names_are_unique() -> None:
    text = CASES.replace("approved writes are allowed", "writes in dev are allowed")
    with pytest.raises(InvalidContract, match="a second case is named"):
        load_cases(text)


def test_a_path_given_as_str_is_read_as_yaml_text() -> None:
    with pytest.raises(InvalidContract, match=r"pass a pathlib\.Path"):
        load_cases("policy-tests.yaml")


def test_a_case_file_needs_cases() -> None:
    with pytest.raises(InvalidContract) as caught:
        load_cases("entities: []\n")
    assert [issue.path for issue in caught.value.issues] == ["cases"]


def test_explain_a_require_approval(defaults: PolicyEngine) -> None:
    write = tool("fs.write_file", "write")
    text = explain(defaults, request(write.uid), [agent(), write])
    assert 'Request: Agent::"support-bot" -> tool.call -> Tool::"fs.write_file"' in text
    assert "tool-write-in-tenant (permit)" in text
    assert "tool-write-needs-approval (approval-forbid)" in text
    assert "Pass 1, all policies: only approval-forbid(s) tool-write-needs-approval hold." in text
    assert "Pass 2, with tool-write-needs-approval assumed approved: permit(s)" in text
    assert "Decision: require_approval" in text
    assert "needs 1 approval(s) from role(s) approver" in text


def test_explain_a_deny_that_approval_would_not_fix(defaults: PolicyEngine) -> None:
    destroy = tool("db.drop", "destructive")
    text = explain(defaults, request(destroy.uid), [agent(), destroy])
    assert "deny-forbid(s) tool-destructive-not-allowed hold -> deny; no second pass." in text
    assert text.splitlines()[-2] == "Decision: deny"


def test_explain_an_approval_nobody_is_asked_for(defaults: PolicyEngine) -> None:
    from _policy_world import ALICE, user

    viewer = user(roles=("viewer",))
    req = request(agent().uid, principal=ALICE, action="agent.promote", stage="production")
    text = explain(defaults, req, [viewer, agent()])
    assert "no permit holds -> default deny, so nobody is asked to approve." in text
    assert "Decision: deny" in text


def test_explain_errors_and_granted_approvals(defaults: PolicyEngine) -> None:
    write = tool("fs.write_file", "write")
    text = explain(defaults, request(write.uid), [agent()])
    assert "Errors (any error denies, fail closed):" in text
    granted = explain(
        defaults,
        request(write.uid),
        [agent(), write],
        approvals_granted=["tool-write-needs-approval"],
    )
    assert "approvals granted: tool-write-needs-approval" in granted
    assert "no forbid holds; permit(s) tool-write-in-tenant -> allow." in granted
    assert "Decision: allow" in granted


def test_a_duplicate_key_in_a_case_is_refused_with_its_line() -> None:
    # The last ``expect`` would win: a case file could pass while saying two things.
    text = "cases:\n  - name: c\n    expect: deny\n    expect: allow\n"
    with pytest.raises(InvalidContract) as caught:
        load_cases(text)
    [issue] = caught.value.issues
    assert (issue.path, issue.line) == ("cases[0].expect", 4)
    assert "duplicate key 'expect' (first at line 3)" in issue.message


def test_an_alias_bomb_in_a_case_file_is_refused(tmp_path: Path) -> None:
    lines = ["l0: &l0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "cases.yaml"
    path.write_text("\n".join(lines) + "\ncases: []\n")
    with pytest.raises(InvalidContract) as caught:
        load_cases(path)
    [issue] = caught.value.issues
    assert issue.file == str(path)
    assert "aliases expand this document" in issue.message
