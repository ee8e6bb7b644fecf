"""The engine's combination rules, one by one, and its compile-time checks."""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from typing import Any

import cedarpy
import pytest
from _policy_world import BOT, agent, engine, model, request, tool, user

from corral.errors import InvalidContract, InvalidRequest
from corral.policy import (
    DEFAULT_POLICY_TEXT,
    Entity,
    EntityRef,
    PolicyContext,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
    cedar_schema,
)

WRITE = tool("fs.write_file", "write")
READ = tool("fs.read_file", "read")
BASE = [agent(), READ, WRITE]

PERMIT_TOOLS = """
@id("permit-tools")
@reason("tools are fine")
permit (principal, action == Action::"tool.call", resource);
"""
DENY_WRITES = """
@id("deny-writes")
@reason("writes are off today")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "write" };
"""
APPROVE_WRITES = """
@id("approve-writes")
@decision("require_approval")
@approver_role("approver")
@reason("writes need a look")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "write" };
"""


def test_a_permit_allows_with_its_reason() -> None:
    decision = engine(PERMIT_TOOLS).evaluate(request(READ.uid), BASE)
    assert decision.decision == "allow"
    assert decision.determining_policies == ["permit-tools"]
    assert decision.reasons == ["tools are fine"]
    assert decision.errors == []
    assert decision.id.startswith("pdec_")
    assert decision.duration_us > 0


def test_nothing_matching_is_a_default_deny() -> None:
    decision = engine(DENY_WRITES).evaluate(request(READ.uid), BASE)
    assert decision.decision == "deny"
    assert decision.determining_policies == []
    assert "default deny" in decision.reasons[0]


def test_a_deny_forbid_overrides_a_permit() -> None:
    decision = engine(PERMIT_TOOLS + DENY_WRITES).evaluate(request(WRITE.uid), BASE)
    assert decision.decision == "deny"
    assert decision.determining_policies == ["deny-writes"]
    assert decision.reasons == ["writes are off today"]


def test_an_approval_forbid_with_a_permit_requires_approval() -> None:
    decision = engine(PERMIT_TOOLS + APPROVE_WRITES).evaluate(request(WRITE.uid), BASE)
    assert decision.decision == "require_approval"
    assert decision.determining_policies == ["approve-writes"]
    assert decision.reasons == ["writes need a look"]
    assert decision.approver_roles == ["approver"]
    assert decision.required_approvals == 1


def test_approval_and_deny_forbid_together_deny_rather_than_ask() -> None:
    decision = engine(PERMIT_TOOLS + APPROVE_WRITES + DENY_WRITES).evaluate(
        request(WRITE.uid), BASE
    )
    assert decision.decision == "deny"
    assert decision.determining_policies == ["deny-writes"]
    assert decision.approver_roles == []


def test_an_approval_forbid_without_a_permit_denies_rather_than_asks() -> None:
    decision = engine(APPROVE_WRITES).evaluate(request(WRITE.uid), BASE)
    assert decision.decision == "deny"
    assert decision.determining_policies == []
    assert "'approve-writes'" in decision.reasons[0]
    assert "approving would not allow it" in decision.reasons[0]


def test_a_granted_approval_turns_require_approval_into_allow() -> None:
    policies = engine(PERMIT_TOOLS + APPROVE_WRITES)
    decision = policies.evaluate(request(WRITE.uid), BASE, approvals_granted=["approve-writes"])
    assert decision.decision == "allow"
    assert decision.determining_policies == ["permit-tools"]


def test_granting_a_deny_forbid_changes_nothing() -> None:
    policies = engine(PERMIT_TOOLS + DENY_WRITES)
    decision = policies.evaluate(request(WRITE.uid), BASE, approvals_granted=["deny-writes"])
    assert decision.decision == "deny"
    assert decision.determining_policies == ["deny-writes"]


def test_each_approval_policy_is_granted_separately() -> None:
    second = APPROVE_WRITES.replace("approve-writes", "security-review").replace(
        '@approver_role("approver")', '@approver_role("security, platform-admin")'
    )
    policies = engine(PERMIT_TOOLS + APPROVE_WRITES + second)
    both = policies.evaluate(request(WRITE.uid), BASE)
    assert both.decision == "require_approval"
    assert both.determining_policies == ["approve-writes", "security-review"]
    assert both.approver_roles == ["approver", "security", "platform-admin"]
    one = policies.evaluate(request(WRITE.uid), BASE, approvals_granted=["approve-writes"])
    assert one.decision == "require_approval"
    assert one.determining_policies == ["security-review"]
    assert one.approver_roles == ["security", "platform-admin"]
    done = policies.evaluate(
        request(WRITE.uid), BASE, approvals_granted=["approve-writes", "security-review"]
    )
    assert done.decision == "allow"


def test_required_approvals_is_read_and_the_largest_wins() -> None:
    two = APPROVE_WRITES.replace('@reason("writes need a look")', '@required_approvals("2")')
    three = (
        APPROVE_WRITES.replace("approve-writes", "three")
        .replace('@approver_role("approver")', '@approver_role("platform-admin")')
        .replace('@reason("writes need a look")', '@required_approvals("3")')
    )
    policies = engine(PERMIT_TOOLS + two)
    assert policies.policies["approve-writes"].required_approvals == 2
    assert policies.evaluate(request(WRITE.uid), BASE).required_approvals == 2
    both = engine(PERMIT_TOOLS + two + three).evaluate(request(WRITE.uid), BASE)
    assert both.required_approvals == 3
    assert both.reasons == [
        "approval required by policy 'approve-writes'",
        "approval required by policy 'three'",
    ]


def test_approval_defaults_to_one_approver() -> None:
    bare = APPROVE_WRITES.replace('@approver_role("approver")\n', "")
    policy = engine(PERMIT_TOOLS + bare).policies["approve-writes"]
    assert policy.kind == "require_approval"
    assert policy.approver_roles == ("approver",)
    assert policy.required_approvals == 1


def test_constraints_of_the_allowing_permits_are_collected() -> None:
    text = """
    @id("b-limited")
    @constraint_max_calls("3")
    @constraint_timeout_seconds("10")
    permit (principal, action == Action::"tool.call", resource);
    @id("a-other")
    @constraint_max_calls("5")
    permit (principal, action == Action::"tool.call", resource)
    when { resource.side_effect == "read" };
    """
    policies = engine(text)
    write = policies.evaluate(request(WRITE.uid), BASE)
    assert write.constraints == {"max_calls": "3", "timeout_seconds": "10"}
    read = policies.evaluate(request(READ.uid), BASE)
    assert read.determining_policies == ["a-other", "b-limited"]
    assert read.constraints == {"max_calls": "5", "timeout_seconds": "10"}


def test_constraints_come_with_require_approval_too() -> None:
    limited = PERMIT_TOOLS.replace('@reason("tools are fine")', '@constraint_max_calls("1")')
    decision = engine(limited + APPROVE_WRITES).evaluate(request(WRITE.uid), BASE)
    assert decision.decision == "require_approval"
    assert decision.constraints == {"max_calls": "1"}


def test_an_evaluation_error_denies_and_is_recorded() -> None:
    # The tool entity is missing, so reading resource.side_effect fails at evaluation.
    policies = engine(PERMIT_TOOLS + DENY_WRITES)
    decision = policies.evaluate(request(WRITE.uid), [agent()])
    assert decision.decision == "deny"
    assert decision.determining_policies == []
    assert len(decision.errors) == 1
    assert "deny-writes" in decision.errors[0]
    assert 'Tool::"fs.write_file"' in decision.errors[0]
    # permit-tools matched: an error still denies.
    assert "fail closed" in decision.reasons[0]


def test_an_error_in_a_granted_approval_policy_is_not_evaluated() -> None:
    policies = engine(PERMIT_TOOLS + APPROVE_WRITES)
    assert policies.evaluate(request(WRITE.uid), [agent()]).decision == "deny"
    granted = policies.evaluate(request(WRITE.uid), [agent()], approvals_granted=["approve-writes"])
    assert granted.decision == "allow"
    assert granted.errors == []


def test_a_request_cedar_refuses_is_denied() -> None:
    # tool.call does not apply to a Model resource (schema appliesTo).
    decision = engine(PERMIT_TOOLS).evaluate(request(model().uid), [agent(), model()])
    assert decision.decision == "deny"
    assert decision.errors
    assert "Model" in decision.errors[0]


def test_entities_that_do_not_match_the_schema_deny_in_evaluate() -> None:
    broken = Entity(EntityRef("Tool", "fs.write_file"), {"tenant": "acme"})
    decision = engine(PERMIT_TOOLS).evaluate(request(WRITE.uid), [agent(), broken])
    assert decision.decision == "deny"
    assert "to have attribute `kind`" in decision.errors[0]


def test_entities_that_do_not_match_the_schema_raise_when_prebuilt() -> None:
    broken = Entity(EntityRef("Tool", "fs.write_file"), {"tenant": "acme"})
    with pytest.raises(InvalidRequest, match="to have attribute `kind`"):
        engine(PERMIT_TOOLS).entities([broken])
    with pytest.raises(InvalidRequest, match="no Cedar type"):
        engine(PERMIT_TOOLS).entities([Entity(EntityRef("Tool", "x"), {"risk": 0.5})])


def test_prebuilt_entities_decide_like_a_list() -> None:
    policies = engine(PERMIT_TOOLS + APPROVE_WRITES)
    prebuilt = policies.entities(BASE)
    assert prebuilt.size == 3
    from_list = policies.evaluate(request(WRITE.uid), BASE)
    from_set = policies.evaluate(request(WRITE.uid), prebuilt)
    assert from_set.decision == from_list.decision == "require_approval"
    assert from_set.inputs_digest == from_list.inputs_digest


def test_inputs_digest_is_stable_for_equal_requests() -> None:
    policies = engine(PERMIT_TOOLS)
    first = policies.evaluate(request(READ.uid, cost=Decimal("0.5")), BASE)
    again = policies.evaluate(request(READ.uid, cost=Decimal("0.50")), list(reversed(BASE)))
    assert first.id != again.id
    assert first.inputs_digest == again.inputs_digest
    assert re.fullmatch(r"[0-9a-f]{64}", first.inputs_digest)
    other_stage = policies.evaluate(request(READ.uid, stage="dev"), BASE)
    granted = policies.evaluate(request(READ.uid), BASE, approvals_granted=["x"])
    other_entity = policies.evaluate(request(READ.uid), [agent(status="retired"), READ])
    digests = {first.inputs_digest, other_stage.inputs_digest, granted.inputs_digest}
    digests.add(other_entity.inputs_digest)
    assert len(digests) == 4


def _count_cedar_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = cedarpy.is_authorized

    def counting(*args: Any, **kwargs: Any) -> cedarpy.AuthzResult:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(cedarpy, "is_authorized", counting)
    return calls


def test_equal_inputs_ask_cedar_once_and_each_get_their_own_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _count_cedar_calls(monkeypatch)
    policies = engine(PERMIT_TOOLS + APPROVE_WRITES)
    first = policies.evaluate(request(WRITE.uid), BASE)
    again = policies.evaluate(request(WRITE.uid), list(reversed(BASE)))
    assert calls[0] == 1
    assert again.id != first.id
    assert again.decision == first.decision == "require_approval"
    assert again.determining_policies == first.determining_policies == ["approve-writes"]
    assert again.inputs_digest == first.inputs_digest
    # Other inputs are other digests: Cedar is asked again and decides them on their own.
    granted = policies.evaluate(request(WRITE.uid), BASE, approvals_granted=["approve-writes"])
    assert granted.decision == "allow"
    read = policies.evaluate(request(READ.uid), BASE)
    assert read.decision == "allow"
    assert calls[0] == 3
    # An engine with other policies remembers nothing of this one's.
    assert engine(PERMIT_TOOLS + DENY_WRITES).evaluate(request(WRITE.uid), BASE).decision == "deny"
    assert calls[0] == 4


def test_an_evaluation_error_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_cedar_calls(monkeypatch)
    policies = engine(PERMIT_TOOLS + DENY_WRITES)
    for _ in range(2):
        decision = policies.evaluate(request(WRITE.uid), [agent()])
        assert decision.decision == "deny"
        assert len(decision.errors) == 1
    assert calls[0] == 2


def test_inputs_digest_is_the_sha256_of_the_canonical_request_and_entities() -> None:
    import hashlib

    policies = engine(PERMIT_TOOLS)
    req = request(READ.uid)
    entities = policies.entities(BASE)
    canonical = json.dumps(
        {
            "entities_sha256": entities.digest,
            "request": {
                "principal": req.principal.to_cedar(),
                "action": {"type": "Action", "id": req.action},
                "resource": req.resource.to_cedar(),
                "context": req.context.to_cedar(),
            },
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert policies.evaluate(req, entities).inputs_digest == expected


def test_paths_are_canonicalised_before_evaluation() -> None:
    text = (
        PERMIT_TOOLS
        + """
    @id("no-etc")
    forbid (principal, action == Action::"tool.call", resource)
    when { context has path && context.path like "/etc/*" };
    """
    )
    decision = engine(text).evaluate(request(READ.uid, path="/tmp/../etc/./passwd"), BASE)
    assert decision.decision == "deny"
    assert decision.determining_policies == ["no-etc"]


def test_estimated_cost_is_a_cedar_decimal_rounded_up() -> None:
    text = (
        PERMIT_TOOLS
        + """
    @id("costly")
    @decision("require_approval")
    forbid (principal, action == Action::"tool.call", resource)
    when { context.estimated_cost_usd.greaterThan(decimal("1.0000")) };
    """
    )
    policies = engine(text)
    assert policies.evaluate(request(READ.uid, cost=Decimal("1")), BASE).decision == "allow"
    tiny_bit_more = policies.evaluate(request(READ.uid, cost=Decimal("1.00001")), BASE)
    assert tiny_bit_more.decision == "require_approval"


def test_decision_to_dict_is_json() -> None:
    decision = engine(PERMIT_TOOLS).evaluate(request(READ.uid), BASE)
    body = json.loads(json.dumps(decision.to_dict()))
    assert body["decision"] == "allow"
    assert body["policy_set_digest"] == engine(PERMIT_TOOLS).digest


# -- compile-time checks -----------------------------------------------------------------------


def issues_of(*sources: PolicySource) -> list[tuple[str, str, str]]:
    with pytest.raises(InvalidContract) as caught:
        PolicyEngine(sources)
    return [(issue.file, issue.path, issue.message) for issue in caught.value.issues]


def test_unparseable_policy_text_names_the_policy_and_cedars_message() -> None:
    text = "permit (principal, action, resource) when { resource.tenant == };"
    [(file, path, message)] = issues_of(PolicySource("broken-one", text))
    assert (file, path) == ("broken-one", "broken-one")
    assert "unexpected token" in message


def test_an_unknown_attribute_fails_schema_validation_with_cedars_message() -> None:
    text = """
    @id("reads-nope")
    permit (principal, action == Action::"tool.call", resource)
    when { resource.nope == "x" };
    """
    [(file, path, message)] = issues_of(PolicySource("mine", text))
    assert (file, path) == ("mine", "reads-nope")
    assert "attribute `nope`" in message
    assert "`reads-nope`" in message
    assert "policy0" not in message


def test_an_unknown_action_fails_schema_validation() -> None:
    text = 'permit (principal, action == Action::"tool.delete", resource);'
    found = issues_of(PolicySource("delete-tools", text))
    assert {path for _, path, _ in found} == {"delete-tools"}
    assert any('unrecognized action `Action::"tool.delete"`' in message for _, _, message in found)


def test_cedar_type_errors_are_reported() -> None:
    text = 'permit (principal, action == Action::"tool.call", resource) when { context.stage > 1 };'
    [(_, path, message)] = issues_of(PolicySource("typed", text))
    assert path == "typed"
    assert "type" in message.lower()


def test_every_problem_is_reported_at_once() -> None:
    found = issues_of(
        PolicySource("one", "permit (principal, action, resource) when { principal.x };"),
        PolicySource("two", "forbid (principal, action, resource) when { resource.y };"),
    )
    assert {path for _, path, _ in found} == {"one", "two"}


def test_policies_of_a_multi_policy_source_need_an_id() -> None:
    text = "permit (principal, action, resource);\npermit (principal, action, resource);"
    found = issues_of(PolicySource("pair", text))
    assert [message for _, _, message in found] == [
        "policy number 1 has no @id; in a source of several, each needs one",
        "policy number 2 has no @id; in a source of several, each needs one",
    ]


def test_policy_ids_are_unique_across_sources() -> None:
    [(file, path, message)] = issues_of(
        PolicySource("a", PERMIT_TOOLS), PolicySource("b", PERMIT_TOOLS)
    )
    assert (file, path) == ("b", "permit-tools")
    assert "already used in 'a'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '@decision("require_approval") permit (principal, action, resource);',
            "belongs on a forbid",
        ),
        ('@decision("deny") forbid (principal, action, resource);', "@decision('deny') is unknown"),
        (
            '@decision("require_approval") @required_approvals("0") '
            "forbid (principal, action, resource);",
            "from 1 to 10",
        ),
        (
            '@decision("require_approval") @approver_role(" , ") '
            "forbid (principal, action, resource);",
            "names no role",
        ),
        ('@approver_role("x") forbid (principal, action, resource);', "only applies to a forbid"),
        ('@constraint_max("1") forbid (principal, action, resource);', "only apply to permits"),
    ],
)
def test_misused_annotations_are_refused(text: str, expected: str) -> None:
    [(_, path, message)] = issues_of(PolicySource("annotated", text))
    assert path == "annotated"
    assert expected in message


def test_templates_are_refused() -> None:
    text = "permit (principal == ?principal, action, resource);"
    [(_, _, message)] = issues_of(PolicySource("template", text))
    assert "templates" in message


def test_an_invalid_schema_is_refused() -> None:
    with pytest.raises(InvalidContract, match="invalid Cedar schema"):
        PolicyEngine([], schema={"": {"entityTypes": {"A": {"memberOfTypes": ["Nope"]}}}})


def test_an_engine_without_policies_denies_everything() -> None:
    decision = PolicyEngine([]).evaluate(request(READ.uid), BASE)
    assert decision.decision == "deny"


# -- the single Cedar call equals the two passes of the rules --------------------------------


EXTRA = """
@id("costly-needs-finance")
@decision("require_approval")
@approver_role("finance")
forbid (principal, action == Action::"tool.call", resource)
when { context.estimated_cost_usd.greaterThan(decimal("10.0")) };

@id("admin-tools-ask-no-permit")
@decision("require_approval")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "admin" };
"""


def _cedar_set(bodies: dict[str, Any], ids: set[str]) -> cedarpy.PolicySet:
    static = {pid: body for pid, body in bodies.items() if pid in ids}
    document = {"staticPolicies": static, "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


def _two_pass(
    policies: PolicyEngine,
    bodies: dict[str, Any],
    cedar_request: dict[str, Any],
    entities: list[dict[str, Any]],
    granted: set[str],
) -> tuple[str, list[str]]:
    """The rules as the brief states them, with plain Cedar and the original effects."""
    kinds = {pid: policy.kind for pid, policy in policies.policies.items()}
    active = {pid for pid in bodies if not (kinds[pid] == "require_approval" and pid in granted)}

    def cedar(ids: set[str]) -> cedarpy.AuthzResult:
        return cedarpy.is_authorized(
            cedar_request, _cedar_set(bodies, ids), entities, schema=cedar_schema()
        )

    first = cedar(active)
    if first.diagnostics.errors:
        return "deny", []
    if first.allowed:
        return "allow", sorted(first.diagnostics.reasons)
    forbids = sorted(first.diagnostics.reasons)
    if not forbids:
        return "deny", []
    denies = [pid for pid in forbids if kinds[pid] == "deny"]
    if denies:
        return "deny", denies
    second = cedar(active - set(forbids))
    if second.diagnostics.errors or not second.allowed:
        return "deny", []
    return "require_approval", forbids


def test_one_probe_call_decides_like_the_two_passes() -> None:
    policies = PolicyEngine([PolicySource("defaults", DEFAULT_POLICY_TEXT + EXTRA)])
    document = json.loads(cedarpy.policies_to_json_str(DEFAULT_POLICY_TEXT + EXTRA))
    bodies = {body["annotations"]["id"]: body for body in document["staticPolicies"].values()}
    approval_ids = [pid for pid, p in policies.policies.items() if p.kind == "require_approval"]
    grants = [set(), *({pid} for pid in approval_ids), set(approval_ids)]
    checked = 0
    for side_effect, stage, tenant, allowed, cost, granted in itertools.product(
        ["read", "write", "destructive", "admin"],
        ["dev", "production"],
        ["acme", "other"],
        [False, True],
        [Decimal(0), Decimal(20)],
        grants,
    ):
        the_tool = tool("t", side_effect, tenant=tenant)
        entities = [agent(), the_tool]
        req = request(the_tool.uid, stage=stage, cost=cost, destructive_allowed=allowed)
        cedar_request = {
            "principal": BOT.to_cedar(),
            "action": {"type": "Action", "id": "tool.call"},
            "resource": the_tool.uid.to_cedar(),
            "context": req.context.to_cedar(granted),
        }
        cedar_entities = [entity.to_cedar() for entity in entities]
        expected = _two_pass(policies, bodies, cedar_request, cedar_entities, granted)
        decision = policies.evaluate(req, entities, approvals_granted=granted)
        assert (decision.decision, decision.determining_policies) == expected, (
            side_effect,
            stage,
            tenant,
            allowed,
            cost,
            granted,
        )
        checked += 1
    assert checked == 4 * 2 * 2 * 2 * 2 * len(grants)


SCOPED = """
@id("bot-may-use-crm")
@constraint_max_calls("5")
permit (principal == Agent::"support-bot", action == Action::"tool.call",
        resource == Tool::"crm.update");

@id("crm-for-bot-only")
forbid (principal, action == Action::"tool.call", resource == Tool::"crm.update")
unless { principal == Agent::"support-bot" };

@id("users-read-only")
forbid (principal is User, action in [Action::"tool.call", Action::"memory.write"], resource)
when { resource has side_effect && resource.side_effect != "read" };

@id("search-capped")
@constraint_max_calls("3")
permit (principal, action == Action::"tool.call", resource == Tool::"search");

@id("triage-writes-approval")
@decision("require_approval")
@approver_role("triage-lead")
forbid (principal is Agent, action == Action::"tool.call", resource is Tool)
when { principal == Agent::"triage" && resource.side_effect == "write" };

@id("users-in-tenant")
permit (principal is User, action == Action::"tool.call", resource)
when { principal.tenant == resource.tenant && resource.side_effect == "read" };
"""


def test_sliced_evaluation_decides_like_the_two_passes_over_the_whole_set() -> None:
    text = DEFAULT_POLICY_TEXT + EXTRA + SCOPED
    policies = PolicyEngine([PolicySource("all", text)])
    document = json.loads(cedarpy.policies_to_json_str(text))
    bodies = {body["annotations"]["id"]: body for body in document["staticPolicies"].values()}
    principals = [agent(), agent("triage"), user()]
    tools = [
        tool("crm.update", "write"),
        tool("search", "read"),
        tool("fs.write_file", "write"),
        tool("fs.read_file", "read"),
        tool("db.drop", "destructive"),
    ]
    grants: list[set[str]] = [set(), {"triage-writes-approval", "tool-write-needs-approval"}]
    seen = set()
    for principal, the_tool, stage, granted in itertools.product(
        principals, tools, ["dev", "production"], grants
    ):
        entities = [principal, the_tool]
        req = request(the_tool.uid, principal=principal.uid, stage=stage)
        cedar_request = {
            "principal": principal.uid.to_cedar(),
            "action": {"type": "Action", "id": "tool.call"},
            "resource": the_tool.uid.to_cedar(),
            "context": req.context.to_cedar(granted),
        }
        cedar_entities = [entity.to_cedar() for entity in entities]
        expected = _two_pass(policies, bodies, cedar_request, cedar_entities, granted)
        decision = policies.evaluate(req, entities, approvals_granted=granted)
        assert (decision.decision, decision.determining_policies) == expected, (
            principal.uid,
            the_tool.uid,
            stage,
            granted,
        )
        seen.add(decision.decision)
    assert seen == {"allow", "deny", "require_approval"}


def test_policies_scoped_to_a_uid_apply_to_that_uid_only() -> None:
    policies = PolicyEngine([PolicySource("all", DEFAULT_POLICY_TEXT + SCOPED)])
    search, crm = tool("search", "read"), tool("crm.update", "write")
    capped = policies.evaluate(request(search.uid, stage="dev"), [agent(), search])
    assert capped.constraints == {"max_calls": "3"}
    other = policies.evaluate(request(READ.uid, stage="dev"), BASE)
    assert other.constraints == {}
    triage = agent("triage")
    assert policies.evaluate(request(crm.uid, stage="dev"), [agent(), crm]).decision == "allow"
    denied = policies.evaluate(request(crm.uid, principal=triage.uid, stage="dev"), [triage, crm])
    assert denied.determining_policies == ["crm-for-bot-only"]


def test_errors_in_policies_naming_the_request_carry_their_ids() -> None:
    text = (
        PERMIT_TOOLS
        + """
    @id("ghost-approval")
    @decision("require_approval")
    forbid (principal == Agent::"support-bot", action == Action::"tool.call",
            resource == Tool::"ghost")
    when { resource.side_effect == "write" };
    """
    )
    policies = engine(text)
    ghost = EntityRef("Tool", "ghost")
    decision = policies.evaluate(request(ghost), [agent()])
    assert decision.decision == "deny"
    assert decision.errors == [
        'error while evaluating policy `ghost-approval`: entity `Tool::"ghost"` does not exist'
    ]
    granted = policies.evaluate(request(ghost), [agent()], approvals_granted=["ghost-approval"])
    assert granted.decision == "allow"
    assert granted.errors == []


@pytest.mark.parametrize(
    "context",
    [
        PolicyContext("acme", "dev", "alice"),
        PolicyContext(
            "acmé",
            "prod\n",
            'al"ice',
            arguments={"b": [1, 2], "a": {"ü": "x"}},
            path="a/./b/../c",
            url="https://example.com/?q=1",
            estimated_cost_usd=Decimal("-1.23456"),
            destructive_allowed=True,
            workspace='/srv/ré"pos',
        ),
        PolicyContext("acme", "dev", "alice", region="eu-west", deployment="smart#0"),
        PolicyContext("acme", "staging", "alice", eval_passed=True, eval_score=Decimal("0.75")),
        PolicyContext("acme", "staging", "alice", eval_passed=False),
    ],
)
def test_the_context_text_is_the_canonical_json_of_the_context(context: PolicyContext) -> None:
    for granted in ((), ("b", "a")):
        expected = json.dumps(
            context.to_cedar(granted), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert context.cedar_json(granted) == expected


def test_a_context_of_the_wrong_types_is_denied() -> None:
    bad = PolicyContext("acme", None, "alice")  # type: ignore[arg-type]
    req = PolicyRequest(BOT, "tool.call", READ.uid, bad)
    decision = engine(PERMIT_TOOLS).evaluate(req, BASE)
    assert decision.decision == "deny"
    assert "request is invalid" in decision.errors[0]
    assert re.fullmatch(r"[0-9a-f]{64}", decision.inputs_digest)


# --- many paths of one call (path guards) ---------------------------------------------------------

_PATH_POLICIES = """
@id("read-all") permit (principal, action == Action::"tool.call", resource);
@id("no-secrets")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.read_file")
when { context has path && context.path like "secrets/*" };
@id("ask-for-ops") @decision("require_approval")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.read_file")
when { context has path && context.path like "ops/*" };
@id("whole-context") forbid (principal, action == Action::"tool.call", resource == Tool::"other")
when { context == context };
"""


def test_reads_path_only_when_a_policy_that_can_apply_reads_it() -> None:
    policies = engine(_PATH_POLICIES)
    assert policies.reads_path(request(EntityRef("Tool", "fs.read_file")))
    assert not policies.reads_path(request(EntityRef("Tool", "fs.list_dir")))  # sliced out
    assert policies.reads_path(request(EntityRef("Tool", "other")))  # reads context whole
    assert not engine('@id("p") permit (principal, action, resource);').reads_path(
        request(EntityRef("Tool", "fs.read_file"))
    )


def test_decide_paths_agrees_with_one_evaluation_per_path() -> None:
    policies = engine(_PATH_POLICIES)
    entities = [agent(), tool("fs.read_file", "read")]
    call = request(EntityRef("Tool", "fs.read_file"), path=".")
    paths = ["a.txt", "secrets/key", "./secrets/x", "ops/run.sh", "opsx", "sec\0rets/x", 'é/"q']
    for granted in ((), ("ask-for-ops",)):
        kinds = policies.decide_paths(call, entities, paths, approvals_granted=granted)
        expected = [
            policies.evaluate(
                request(EntityRef("Tool", "fs.read_file"), path=path),
                entities,
                approvals_granted=granted,
            ).decision
            for path in paths
        ]
        assert kinds == expected, granted
    assert kinds[:5] == ["allow", "deny", "deny", "allow", "allow"]
    # Entities Cedar refuses deny every path (fail closed), as evaluate does.
    broken = [agent(), Entity(EntityRef("Tool", "fs.read_file"), {"tenant": 5})]
    assert policies.evaluate(call, broken).decision == "deny"
    assert policies.decide_paths(call, broken, ["a", "b"]) == ["deny", "deny"]
