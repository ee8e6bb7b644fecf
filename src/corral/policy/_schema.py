"""The Cedar schema Corral's policies are validated and evaluated against.

The schema is namespace-less, so policies say ``Tool``, ``Action::"tool.call"`` rather than
``Corral::Tool``. It is generated as Cedar's JSON schema format
(https://docs.cedarpolicy.com/schema/json-schema.html).

Cedar records must declare every attribute: open records (``"additionalAttributes": true``) are
refused by the Cedar engine in ``cedarpy`` 4.12 ("unsupported feature used in schema"). Tool
arguments therefore reach policies as their canonical JSON text (``context.arguments_json``, for
``like`` patterns) plus the two arguments policies most often need, ``context.path`` and
``context.url``, each optional (test with ``context has path``).
"""

from __future__ import annotations

import copy
from typing import Any, Final, Literal, get_args

__all__ = ["ACTIONS", "PRINCIPAL_TYPES", "RESOURCE_TYPES", "PolicyAction", "cedar_schema"]

PolicyAction = Literal[
    "agent.invoke",
    "tool.call",
    "model.call",
    "memory.read",
    "memory.write",
    "agent.promote",
    "approval.decide",
    "secret.use",
]
"""A governed action; in Cedar text ``Action::"tool.call"``."""

ACTIONS: Final[tuple[PolicyAction, ...]] = get_args(PolicyAction)
PRINCIPAL_TYPES: Final = ("User", "ServiceAccount", "Agent")
RESOURCE_TYPES: Final = ("Agent", "Tool", "Model", "Namespace")

_STRING: Final = {"type": "String"}
_OPTIONAL_STRING: Final = {"type": "String", "required": False}
_STRING_SET: Final = {"type": "Set", "element": {"type": "String"}}

_ATTRIBUTES: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "User": {"tenant": _STRING, "roles": _STRING_SET, "groups": _STRING_SET},
    "ServiceAccount": {"tenant": _STRING, "roles": _STRING_SET},
    "Agent": {"tenant": _STRING, "owner": _STRING, "risk_tier": _STRING, "status": _STRING},
    "Tool": {
        "tenant": _STRING,
        "owner": _STRING,
        "side_effect": _STRING,
        "risk": _STRING,
        "kind": _STRING,
    },
    "Model": {"provider": _STRING, "name": _STRING},
    "Namespace": {"tenant": _STRING},
}

_CONTEXT: Final[dict[str, dict[str, Any]]] = {
    "tenant": _STRING,
    "stage": _STRING,
    "requester": _STRING,
    "estimated_cost_usd": {"type": "Extension", "name": "decimal"},
    "approvals_granted": _STRING_SET,
    "destructive_allowed": {"type": "Boolean"},
    "arguments_json": _STRING,
    "path": _OPTIONAL_STRING,
    "url": _OPTIONAL_STRING,
    "secret": _OPTIONAL_STRING,
    "workspace": _OPTIONAL_STRING,
    "region": _OPTIONAL_STRING,
    "deployment": _OPTIONAL_STRING,
    "eval_passed": {"type": "Boolean", "required": False},
    "eval_score": {"type": "Extension", "name": "decimal", "required": False},
}

_APPLIES_TO: Final[dict[PolicyAction, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "agent.invoke": (("User", "ServiceAccount", "Agent"), ("Agent",)),
    "tool.call": (("Agent", "User", "ServiceAccount"), ("Tool",)),
    "model.call": (("Agent", "User", "ServiceAccount"), ("Model",)),
    "memory.read": (("Agent", "User", "ServiceAccount"), ("Namespace",)),
    "memory.write": (("Agent", "User", "ServiceAccount"), ("Namespace",)),
    "agent.promote": (("User", "ServiceAccount"), ("Agent",)),
    # People decide approvals by role; a service account only where a policy permits this.
    "approval.decide": (("User", "ServiceAccount"), ("Agent", "Tool")),
    "secret.use": (("Agent", "ServiceAccount"), ("Tool", "Namespace")),
}


def cedar_schema() -> dict[str, Any]:
    """The Cedar JSON schema of Corral's entities, actions and request context.

    Entity types and their attributes (all required):

    * ``User``: ``tenant`` String, ``roles`` Set<String>, ``groups`` Set<String>.
    * ``ServiceAccount``: ``tenant``, ``roles``.
    * ``Agent`` (principal and resource): ``tenant``, ``owner``, ``risk_tier``
      (``low|medium|high|critical``), ``status`` (``draft|active|deprecated|retired``).
    * ``Tool``: ``tenant``, ``owner``, ``side_effect`` (``read|write|destructive``), ``risk``,
      ``kind`` (``builtin|mcp|http``).
    * ``Model``: ``provider``, ``name``. ``Namespace`` (a memory scope): ``tenant``.

    Every action shares one context type, ``RequestContext``:

    * ``tenant``, ``stage`` (for ``agent.promote``: the target stage), ``requester`` (who
      started the run): String.
    * ``estimated_cost_usd``: Cedar ``decimal`` (4 decimal places), US dollars.
    * ``approvals_granted``: Set<String>, the ids of approval policies people have approved.
    * ``destructive_allowed``: Boolean, see :mod:`corral.policy` defaults.
    * ``arguments_json``: String, the tool arguments as canonical JSON (``"{}"`` when none).
    * ``path``, ``url``: optional String, the canonical path / URL argument of a tool call.
    * ``secret``: optional String, the secret's name (``secret.use`` only).
    * ``workspace``: optional String, the run's canonical workspace directory (``agent.invoke``
      only; absent when the run has none), e.g. ``context.workspace like "/srv/repos/*"``.
    * ``region``, ``deployment``: optional String (``model.call`` only), the region label and
      name of the model deployment about to be called, e.g. ``context.region == "eu-west"``.
    * ``eval_passed``: optional Boolean, ``eval_score``: optional ``decimal`` (0..1)
      (``agent.promote`` only, when the eval gate checked the version): whether its evals
      passed, and the lowest success rate among them, e.g.
      ``context has eval_score && context.eval_score.greaterThanOrEqual(decimal("0.9"))``.

    Returns:
        A new dict each call (callers may extend it), ready for ``json.dumps``.
    """
    entity_types = {
        name: {"shape": {"type": "Record", "attributes": attributes}}
        for name, attributes in _ATTRIBUTES.items()
    }
    actions = {
        action: {
            "appliesTo": {
                "principalTypes": list(principals),
                "resourceTypes": list(resources),
                "context": {"type": "RequestContext"},
            }
        }
        for action, (principals, resources) in _APPLIES_TO.items()
    }
    context = {"type": "Record", "attributes": _CONTEXT}
    schema = {
        "": {
            "commonTypes": {"RequestContext": context},
            "entityTypes": entity_types,
            "actions": actions,
        }
    }
    return copy.deepcopy(schema)
