"""The Cedar schema, the public surface of ``corral.policy`` and its docstring examples."""

from __future__ import annotations

import json
import re

import cedarpy

import corral.policy
from corral.policy import ACTIONS, PRINCIPAL_TYPES, RESOURCE_TYPES, PolicyEngine, cedar_schema


def test_cedar_parses_the_schema() -> None:
    schema = cedarpy.Schema.from_json_str(json.dumps(cedar_schema()))
    text = str(schema)
    for action in ACTIONS:
        assert f'action "{action}"' in text
    for entity_type in {*PRINCIPAL_TYPES, *RESOURCE_TYPES}:
        assert f"entity {entity_type} " in text


def test_each_call_returns_a_fresh_schema() -> None:
    first = cedar_schema()
    first[""]["entityTypes"]["Tool"]["shape"]["attributes"]["tenant"]["type"] = "Long"
    assert cedar_schema()[""]["entityTypes"]["Tool"]["shape"]["attributes"]["tenant"] == {
        "type": "String"
    }


def test_every_action_applies_to_known_types() -> None:
    actions = cedar_schema()[""]["actions"]
    assert sorted(actions) == sorted(ACTIONS)
    for spec in actions.values():
        assert set(spec["appliesTo"]["principalTypes"]) <= set(PRINCIPAL_TYPES)
        assert set(spec["appliesTo"]["resourceTypes"]) <= set(RESOURCE_TYPES)


def test_a_schema_can_be_extended() -> None:
    schema = cedar_schema()
    tool = schema[""]["entityTypes"]["Tool"]["shape"]["attributes"]
    tool["labels"] = {"type": "Set", "element": {"type": "String"}}
    text = (
        'permit (principal, action == Action::"tool.call", resource) '
        'when { resource.labels.contains("ok") };'
    )
    engine = PolicyEngine([corral.policy.PolicySource("labelled", text)], schema=schema)
    assert list(engine.policies) == ["labelled"]


def test_docstring_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", PolicyEngine.__doc__ or "", re.DOTALL)
    assert blocks
    for block in blocks:
        lines = block.splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        exec("\n".join(line[indent:] for line in lines), {})
