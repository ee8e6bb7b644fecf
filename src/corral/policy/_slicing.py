"""Policy slicing: hand Cedar only the policies whose scope can match the request.

Cedar evaluates every policy of the set it is given, including those whose scope
(``principal == ...``, ``action == ...``, ``resource == ...``) rules them out at once: with
``cedarpy`` 4.12 that costs about 1-2 us per policy, so 500 policies cost about 1 ms per
decision. A policy whose scope cannot match the request is never satisfied and never raises
(Cedar checks the scope before the conditions), so leaving it out changes nothing: this is the
"policy slicing" Cedar's documentation recommends for large policy stores.

What a scope rules out, per request variable (anything else keeps the policy):

* ``principal == X`` / ``resource == X``: every other uid;
* ``principal is T`` (with or without ``in``) / ``resource is T``: every other type;
* ``action == A``: every other action; ``action in [A, B]``: every action not listed, but only
  when the schema defines no action groups (``memberOf``), since a group would make ``in``
  reach further.

``principal in X`` depends on the entity hierarchy and keeps the policy.

Slices are cached per (action, principal, resource) and per distinct content, bounded (least
recently used first out). The base slices, which hold no policy naming a uid, one per (action,
principal type, resource type) of the schema, are parsed when the engine is built, so the
first decision about a principal and resource without policies of their own parses nothing;
a principal or resource with policies of its own costs one small parse the first time.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

__all__ = ["PolicySlicer", "Slice"]

MAX_CACHED_REQUESTS: Final = 4096
"""(action, principal, resource) triples whose slice is remembered."""
MAX_CACHED_POLICY_SETS: Final = 512
"""Distinct slices (of each of the two kinds) whose parsed Cedar policy set is kept."""


@dataclass(frozen=True, slots=True)
class _Scope:
    """What one scope constraint admits: a uid, a type, or (both ``None``) anything."""

    entity_type: str | None = None
    entity_id: str | None = None

    def admits(self, entity_type: str, entity_id: str | None) -> bool:
        if self.entity_type is not None and self.entity_type != entity_type:
            return False
        return self.entity_id is None or self.entity_id == entity_id


_ANY: Final = _Scope()


def _scope(constraint: Mapping[str, Any]) -> _Scope:
    """Read a principal or resource constraint of Cedar's JSON policy format."""
    op = constraint.get("op")
    entity = constraint.get("entity")
    if op == "==" and isinstance(entity, Mapping) and "type" in entity and "id" in entity:
        return _Scope(str(entity["type"]), str(entity["id"]))
    if op == "is" and isinstance(constraint.get("entity_type"), str):
        return _Scope(constraint["entity_type"])
    return _ANY  # "All", "in" (hierarchy), slots, or syntax newer than this code


def _actions(constraint: Mapping[str, Any], *, groups: bool) -> frozenset[str] | None:
    """The action ids an action constraint admits; ``None`` for any."""
    op = constraint.get("op")
    if op == "==":
        return frozenset([str(constraint["entity"]["id"])])
    if op == "in" and not groups:
        entities = constraint.get("entities") or [constraint.get("entity")]
        if all(isinstance(entity, Mapping) and "id" in entity for entity in entities):
            return frozenset(str(entity["id"]) for entity in entities)
    return None


@dataclass(frozen=True, slots=True)
class _Indexed:
    policy_id: str
    principal: _Scope
    resource: _Scope


@dataclass(frozen=True, slots=True)
class Slice:
    """A parsed Cedar policy set and the Corral id of each of its Cedar policy ids.

    Attributes:
        policy_set: The policies to hand Cedar.
        names: Cedar's policy id (as in its reasons and errors) -> Corral's policy id.
    """

    policy_set: cedarpy.PolicySet
    names: Mapping[str, str]


class PolicySlicer:
    """Parsed Cedar policy sets holding only the policies a request's scope can match.

    A slice is the *base* slice of the request's (action, principal type, resource type),
    built from Cedar's JSON format with ids ``c0``, ``c1``... (never ``policyN``), plus the
    policies that name the request's principal or resource, added as Cedar text with
    ``PolicySet.with_added_str``: the base is not parsed again, and since no base id looks
    positional the added policies keep Cedar's positional ids ``policy0``, ``policy1``... in
    order (https://github.com/k9securityio/cedar-py, ``PolicySet.with_added_str``).

    Args:
        bodies: Policies in Cedar's JSON format by id, in order, already made permits (the
            engine's probe form).
        schema: The Cedar JSON schema, to learn action groups and which principal and
            resource types each action applies to.
    """

    def __init__(self, bodies: Mapping[str, Mapping[str, Any]], schema: Mapping[str, Any]):
        self._bodies = {
            policy_id: {key: value for key, value in body.items() if key != "annotations"}
            for policy_id, body in bodies.items()
        }
        self._internal = {policy_id: f"c{index}" for index, policy_id in enumerate(bodies)}
        applies_to = dict(_applies_to(schema))
        groups = _has_action_groups(schema)
        self._by_action: dict[str, list[_Indexed]] = {action: [] for action in applies_to}
        self._any_action: list[_Indexed] = []
        for policy_id, body in self._bodies.items():
            indexed = _Indexed(policy_id, _scope(body["principal"]), _scope(body["resource"]))
            actions = _actions(body["action"], groups=groups)
            if actions is None:
                self._any_action.append(indexed)
                continue
            for action in actions:
                self._by_action.setdefault(action, []).append(indexed)
        self._base = functools.lru_cache(maxsize=MAX_CACHED_POLICY_SETS)(self._build_base)
        self._extended = functools.lru_cache(maxsize=MAX_CACHED_POLICY_SETS)(self._build_extended)
        self._text = functools.lru_cache(maxsize=None)(self._policy_text)
        self._slice = functools.lru_cache(maxsize=MAX_CACHED_REQUESTS)(self._compute)
        for action, (principal_types, resource_types) in applies_to.items():
            for principal_type in principal_types:
                for resource_type in resource_types:
                    self._base(self._ids(action, principal_type, None, resource_type, None))

    def slice(self, action: str, principal: tuple[str, str], resource: tuple[str, str]) -> Slice:
        """The Cedar policies to evaluate this request with.

        Args:
            action: The action id.
            principal: The principal's ``(type, id)``.
            resource: The resource's ``(type, id)``.

        Raises:
            ValueError: Cedar refused a policy set (not expected: every policy parsed before).
        """
        return self._slice(action, *principal, *resource)

    def _compute(
        self,
        action: str,
        principal_type: str,
        principal_id: str,
        resource_type: str,
        resource_id: str,
    ) -> Slice:
        base = self._ids(action, principal_type, None, resource_type, None)
        admitted = self._ids(action, principal_type, principal_id, resource_type, resource_id)
        if admitted == base:
            return self._base(base)
        in_base = set(base)
        own = tuple(policy_id for policy_id in admitted if policy_id not in in_base)
        return self._extended(base, own)

    def _ids(
        self,
        action: str,
        principal_type: str,
        principal_id: str | None,
        resource_type: str,
        resource_id: str | None,
    ) -> tuple[str, ...]:
        """Ids of the policies the scope admits, in policy order (so equal slices are equal).

        ``None`` ids stand for a principal or resource no policy names.
        """
        admitted = {
            indexed.policy_id
            for indexed in (*self._by_action.get(action, ()), *self._any_action)
            if indexed.principal.admits(principal_type, principal_id)
            and indexed.resource.admits(resource_type, resource_id)
        }
        return tuple(policy_id for policy_id in self._bodies if policy_id in admitted)

    def _build_base(self, ids: tuple[str, ...]) -> Slice:
        static = {self._internal[policy_id]: self._bodies[policy_id] for policy_id in ids}
        document = {"staticPolicies": static, "templates": {}, "templateLinks": []}
        policy_set = cedarpy.PolicySet.from_json_str(json.dumps(document))
        return Slice(policy_set, {self._internal[policy_id]: policy_id for policy_id in ids})

    def _build_extended(self, base_ids: tuple[str, ...], own: tuple[str, ...]) -> Slice:
        base = self._base(base_ids)
        policy_set = base.policy_set.with_added_str("\n".join(map(self._text, own)))
        names = {**base.names, **{f"policy{index}": pid for index, pid in enumerate(own)}}
        if len(policy_set) != len(base_ids) + len(own):
            raise ValueError(f"Cedar built {len(policy_set)} policies from {len(names)}")
        return Slice(policy_set, names)

    def _policy_text(self, policy_id: str) -> str:
        static = {"p": self._bodies[policy_id]}
        document = {"staticPolicies": static, "templates": {}, "templateLinks": []}
        return cedarpy.policies_from_json_str(json.dumps(document))


def _namespaces(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for namespace, body in schema.items():
        if isinstance(body, Mapping):
            yield (f"{namespace}::" if namespace else ""), body


def _applies_to(schema: Mapping[str, Any]) -> Iterator[tuple[str, tuple[list[str], list[str]]]]:
    """``(action id, (principal types, resource types))`` for each action of the schema."""
    for prefix, body in _namespaces(schema):
        for action, spec in (body.get("actions") or {}).items():
            applies = (spec or {}).get("appliesTo") or {}
            principals = [_qualified(prefix, t) for t in applies.get("principalTypes") or []]
            resources = [_qualified(prefix, t) for t in applies.get("resourceTypes") or []]
            yield action, (principals, resources)


def _qualified(prefix: str, entity_type: str) -> str:
    return entity_type if "::" in entity_type else prefix + entity_type


def _has_action_groups(schema: Mapping[str, Any]) -> bool:
    return any(
        (spec or {}).get("memberOf")
        for _, body in _namespaces(schema)
        for spec in (body.get("actions") or {}).values()
    )
