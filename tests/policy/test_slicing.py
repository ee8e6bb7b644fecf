"""Policy slicing keeps every policy whose scope can match, and only those when it can tell."""

from __future__ import annotations

import json

import cedarpy

from corral.policy import cedar_schema
from corral.policy._slicing import PolicySlicer

TEXT = """
@id("any") permit (principal, action, resource);
@id("bot") permit (principal == Agent::"bot", action, resource);
@id("users") permit (principal is User, action, resource);
@id("users-in") permit (principal is User in Namespace::"n", action, resource);
@id("in-ns") permit (principal in Namespace::"n", action, resource);
@id("calls") permit (principal, action == Action::"tool.call", resource);
@id("calls-or-models")
permit (principal, action in [Action::"tool.call", Action::"model.call"], resource);
@id("search") permit (principal, action, resource == Tool::"search");
@id("tools") permit (principal, action, resource is Tool);
"""


def bodies() -> dict[str, dict[str, object]]:
    document = json.loads(cedarpy.policies_to_json_str(TEXT))
    return {body["annotations"]["id"]: body for body in document["staticPolicies"].values()}


def test_scopes_rule_out_what_they_can() -> None:
    slicer = PolicySlicer(bodies(), cedar_schema())
    assert slicer._ids("tool.call", "Agent", "bot", "Tool", "search") == (
        "any",
        "bot",
        "in-ns",
        "calls",
        "calls-or-models",
        "search",
        "tools",
    )
    assert slicer._ids("model.call", "User", "alice", "Model", "m") == (
        "any",
        "users",
        "users-in",
        "in-ns",
        "calls-or-models",
    )
    assert slicer._ids("memory.read", "Agent", "other", "Namespace", "n") == ("any", "in-ns")


def test_action_groups_make_in_reach_every_action() -> None:
    schema = cedar_schema()
    schema[""]["actions"]["tool.call"]["memberOf"] = [{"id": "model.call"}]
    slicer = PolicySlicer(bodies(), schema)
    assert "calls-or-models" in slicer._ids("memory.read", "Agent", "x", "Namespace", "n")
    assert "calls" not in slicer._ids("memory.read", "Agent", "x", "Namespace", "n")


def test_equal_slices_share_one_policy_set() -> None:
    slicer = PolicySlicer(bodies(), cedar_schema())
    first = slicer.slice("tool.call", ("Agent", "a1"), ("Tool", "t1"))
    second = slicer.slice("tool.call", ("Agent", "a2"), ("Tool", "t2"))
    assert first is second
    assert sorted(first.names.values()) == ["any", "calls", "calls-or-models", "in-ns", "tools"]
    assert len(first.policy_set) == 5


def test_policies_naming_a_uid_are_added_to_the_base_slice() -> None:
    slicer = PolicySlicer(bodies(), cedar_schema())
    base = slicer.slice("tool.call", ("Agent", "a1"), ("Tool", "t1"))
    own = slicer.slice("tool.call", ("Agent", "bot"), ("Tool", "search"))
    assert len(own.policy_set) == 7
    assert own.names == {**base.names, "policy0": "bot", "policy1": "search"}
    assert not any(name.startswith("policy") for name in base.names)
