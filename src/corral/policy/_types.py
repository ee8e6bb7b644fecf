"""The values the policy engine takes and returns: entities, requests, sources, decisions.

Each maps onto Cedar's JSON forms (https://docs.cedarpolicy.com/auth/entities-syntax.html):
:meth:`EntityRef.to_cedar`, :meth:`Entity.to_cedar`, :meth:`PolicyContext.to_cedar`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from json.encoder import encode_basestring
from typing import Any, Final, Literal

import cedarpy

from corral.policy._schema import PolicyAction

__all__ = [
    "CompiledPolicy",
    "DecisionKind",
    "Entity",
    "EntityRef",
    "EntitySet",
    "PolicyContext",
    "PolicyDecision",
    "PolicyKind",
    "PolicyRequest",
    "PolicySource",
]

DecisionKind = Literal["allow", "deny", "require_approval"]
PolicyKind = Literal["permit", "deny", "require_approval"]
"""What a matching policy does: a permit, a deny-forbid, or an approval-forbid."""

_CEDAR_DECIMAL_PLACES: Final = Decimal("0.0001")


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, UTF-8 text (as ``corral.audit.canonical_json``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``text``, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def _decimal_text(value: Decimal) -> str:
    """A Cedar ``decimal`` literal: 4 places, rounded up (Cedar's ``decimal`` has 4)."""
    return f"{value.quantize(_CEDAR_DECIMAL_PLACES, rounding=ROUND_CEILING):f}"


def _cedar_decimal(value: Decimal) -> dict[str, Any]:
    """A Cedar ``decimal`` in Cedar's JSON extension form."""
    return {"__extn": {"fn": "decimal", "arg": _decimal_text(value)}}


@dataclass(frozen=True, slots=True)
class EntityRef:
    """The uid of a Cedar entity, e.g. ``EntityRef("Tool", "fs.read_file")``.

    Attributes:
        type: Entity type (``User``, ``ServiceAccount``, ``Agent``, ``Tool``, ``Model``,
            ``Namespace``).
        id: Entity id; any string.
    """

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}::{json.dumps(self.id, ensure_ascii=False)}"

    @classmethod
    def parse(cls, text: str) -> EntityRef:
        """Parse ``Type::"id"`` (Cedar syntax) or the shorthand ``Type::id``.

        Raises:
            ValueError: ``text`` has no ``::`` or an empty type or id.
        """
        entity_type, sep, entity_id = text.partition("::")
        if len(entity_id) >= 2 and entity_id[0] == entity_id[-1] == '"':
            entity_id = json.loads(entity_id)
        if not sep or not entity_type or not entity_id:
            raise ValueError(f'{text!r} is not an entity uid; write it as Type::"id"')
        return cls(entity_type, entity_id)

    def to_cedar(self) -> dict[str, str]:
        """Cedar's JSON form, ``{"type": ..., "id": ...}``."""
        return {"type": self.type, "id": self.id}

    def canonical_json(self) -> str:
        """The canonical JSON text of :meth:`to_cedar` (sorted keys, compact)."""
        return f'{{"id":{encode_basestring(self.id)},"type":{encode_basestring(self.type)}}}'


def _cedar_value(value: object) -> Any:
    """Convert a Python attribute value to Cedar's JSON value form.

    ``str``, ``bool``, ``int`` map to String, Boolean, Long; ``Decimal`` to ``decimal``;
    :class:`EntityRef` to an entity reference; mappings to records; lists, tuples and sets
    to sets (sorted, since Cedar sets have no order).
    """
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, Decimal):
        return _cedar_decimal(value)
    if isinstance(value, EntityRef):
        return {"__entity": value.to_cedar()}
    if isinstance(value, Mapping):
        return {str(key): _cedar_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return sorted((_cedar_value(item) for item in value), key=canonical_json)
    raise TypeError(
        f"{type(value).__name__} value {value!r} has no Cedar type; use str, bool, int, "
        "Decimal, EntityRef, a mapping or a set/list of those (Cedar has no floats)"
    )


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity of the request's world: a principal, a resource, or one of their parents.

    Attributes:
        uid: The entity's uid.
        attrs: Attribute values (see the schema in :func:`corral.policy.cedar_schema`);
            ``str``, ``bool``, ``int``, ``Decimal``, :class:`EntityRef`, mappings, and
            lists/sets of those.
        parents: Entities this one is ``in`` (Cedar's hierarchy).
    """

    uid: EntityRef
    attrs: Mapping[str, object] = field(default_factory=dict)
    parents: tuple[EntityRef, ...] = ()

    def to_cedar(self) -> dict[str, Any]:
        """Cedar's JSON entity form (``uid``, ``attrs``, ``parents``)."""
        return {
            "uid": self.uid.to_cedar(),
            "attrs": {name: _cedar_value(value) for name, value in self.attrs.items()},
            "parents": sorted((parent.to_cedar() for parent in self.parents), key=canonical_json),
        }


@dataclass(frozen=True, slots=True, eq=False)
class EntitySet:
    """Entities parsed and checked against the schema once, reusable across decisions.

    Build one with :meth:`PolicyEngine.entities`.

    Attributes:
        handle: The parsed ``cedarpy.Entities``.
        digest: SHA-256 (hex) of the canonical JSON of the entities, sorted by uid.
        size: Number of entities.
    """

    handle: cedarpy.Entities = field(repr=False)
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The request context policies read as ``context.<name>`` (type ``RequestContext``).

    Attributes:
        tenant: Tenant the action runs in.
        stage: Stage or environment (``dev``, ``staging``, ``production``); for
            ``agent.promote``, the stage promoted to.
        requester: Principal who started the run or asked for the action.
        arguments: Tool arguments; policies see them as ``context.arguments_json``
            (canonical JSON).
        path: The path argument of a tool call, if any. Canonicalised lexically
            (``posixpath.normpath``: ``a/./b/../c`` -> ``a/c``) before evaluation.
        url: The URL argument of a tool call, if any.
        estimated_cost_usd: Estimated cost of the action in US dollars; Cedar ``decimal``,
            rounded up to 4 places.
        destructive_allowed: ``True`` only when the agent's contract names this destructive
            tool explicitly (not by wildcard); set by the runtime, never from model output.
        secret: For ``secret.use``: the name of the secret (never its value).
        workspace: For ``agent.invoke``: the run's canonical workspace directory (absolute,
            symlinks resolved), if it has one.
        region: For ``model.call``: the region label of the deployment about to be called,
            if it has one.
        deployment: For ``model.call``: the deployment's name (``alias#index``, or the
            ``provider/model`` name itself).
        eval_passed: For ``agent.promote`` to a gated stage: whether the version's evals of
            its exact digest passed the agent's eval gate (absent when nothing was checked).
        eval_score: For ``agent.promote``: the lowest success rate (0..1) among those evals;
            Cedar ``decimal``, 4 places.
    """

    tenant: str
    stage: str
    requester: str
    arguments: Mapping[str, object] = field(default_factory=dict)
    path: str | None = None
    url: str | None = None
    estimated_cost_usd: Decimal = Decimal(0)
    destructive_allowed: bool = False
    secret: str | None = None
    workspace: str | None = None
    region: str | None = None
    deployment: str | None = None
    eval_passed: bool | None = None
    eval_score: Decimal | None = None

    def to_cedar(self, approvals_granted: Iterable[str] = ()) -> dict[str, Any]:
        """Cedar's JSON context, with ``approvals_granted`` as a sorted set."""
        context: dict[str, Any] = {
            "tenant": self.tenant,
            "stage": self.stage,
            "requester": self.requester,
            "estimated_cost_usd": _cedar_decimal(self.estimated_cost_usd),
            "approvals_granted": sorted(approvals_granted),
            "destructive_allowed": self.destructive_allowed,
            "arguments_json": canonical_json(self.arguments) if self.arguments else "{}",
        }
        if self.path is not None:
            context["path"] = posixpath.normpath(self.path)
        if self.url is not None:
            context["url"] = self.url
        if self.secret is not None:
            context["secret"] = self.secret
        if self.workspace is not None:
            context["workspace"] = self.workspace
        if self.region is not None:
            context["region"] = self.region
        if self.deployment is not None:
            context["deployment"] = self.deployment
        if self.eval_passed is not None:
            context["eval_passed"] = self.eval_passed
        if self.eval_score is not None:
            context["eval_score"] = _cedar_decimal(self.eval_score)
        return context

    def cedar_json(self, approvals_granted: Iterable[str] = ()) -> str:
        """``canonical_json(self.to_cedar(approvals_granted))``, written out directly.

        Every decision needs this text; writing it here costs a few microseconds less than
        encoding the dict.

        Raises:
            TypeError: A field does not have its declared type.
        """
        if not isinstance(self.destructive_allowed, bool):
            raise TypeError(f"destructive_allowed must be a bool, not {self.destructive_allowed!r}")
        approvals = ",".join(map(encode_basestring, sorted(approvals_granted)))
        arguments = canonical_json(self.arguments) if self.arguments else "{}"
        parts = [
            f'{{"approvals_granted":[{approvals}]',
            f'"arguments_json":{encode_basestring(arguments)}',
        ]
        if self.deployment is not None:
            parts.append(f'"deployment":{encode_basestring(self.deployment)}')
        parts += [
            f'"destructive_allowed":{"true" if self.destructive_allowed else "false"}',
            '"estimated_cost_usd":{"__extn":{"arg":"'
            f'{_decimal_text(self.estimated_cost_usd)}","fn":"decimal"}}}}',
        ]
        if self.eval_passed is not None:
            parts.append(f'"eval_passed":{"true" if self.eval_passed else "false"}')
        if self.eval_score is not None:
            parts.append(
                f'"eval_score":{{"__extn":{{"arg":"{_decimal_text(self.eval_score)}",'
                '"fn":"decimal"}}'
            )
        if self.path is not None:
            parts.append(f'"path":{encode_basestring(posixpath.normpath(self.path))}')
        if self.region is not None:
            parts.append(f'"region":{encode_basestring(self.region)}')
        parts.append(f'"requester":{encode_basestring(self.requester)}')
        if self.secret is not None:
            parts.append(f'"secret":{encode_basestring(self.secret)}')
        parts.append(f'"stage":{encode_basestring(self.stage)}')
        parts.append(f'"tenant":{encode_basestring(self.tenant)}')
        if self.url is not None:
            parts.append(f'"url":{encode_basestring(self.url)}')
        if self.workspace is not None:
            parts.append(f'"workspace":{encode_basestring(self.workspace)}')
        return ",".join(parts) + "}"


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """Who wants to do what to which resource, in which context.

    Attributes:
        principal: ``User``, ``ServiceAccount`` or ``Agent``.
        action: The governed action.
        resource: ``Agent``, ``Tool``, ``Model`` or ``Namespace`` (see the schema for which
            action takes which).
        context: The request context.
    """

    principal: EntityRef
    action: PolicyAction
    resource: EntityRef
    context: PolicyContext


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Cedar policy text from one place (a file, a ``Policy`` contract, the defaults).

    Each policy's id is its ``@id("...")`` annotation; a source holding exactly one policy
    may leave it out, and the policy takes the source's id.

    Attributes:
        id: Name of the source, used in error messages and as the id of a lone policy.
        text: Cedar policy text: one policy, or several each with an ``@id``.
    """

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy of an engine, with its Corral annotations read.

    Attributes:
        id: The policy id (its ``@id``, or its source's id).
        source_id: The :class:`PolicySource` it came from.
        effect: Cedar's effect.
        kind: ``permit``, ``deny`` (a deny-forbid) or ``require_approval`` (an
            approval-forbid).
        annotations: Every annotation, verbatim.
        reason: ``@reason``, if any.
        approver_roles: Roles that may approve (approval-forbids only).
        required_approvals: Approvals needed (approval-forbids only; 0 otherwise).
        constraints: ``@constraint_<name>`` values by name (permits only).
    """

    id: str
    source_id: str
    effect: Literal["permit", "forbid"]
    kind: PolicyKind
    annotations: Mapping[str, str]
    reason: str | None
    approver_roles: tuple[str, ...] = ()
    required_approvals: int = 0
    constraints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome of one policy evaluation; stored and referenced from the audit event.

    Attributes:
        id: Unique id of this decision (``pdec_`` + 32 hex digits).
        decision: ``allow``, ``deny`` or ``require_approval``.
        determining_policies: Ids of the policies that decided: the permits for ``allow``, the
            pending approval-forbids for ``require_approval`` (approve these ids), the
            deny-forbids for ``deny``; empty for a default deny or an evaluation error.
        reasons: The determining policies' ``@reason`` texts, or a generated explanation.
        approver_roles: Roles that may approve (``require_approval`` only), in policy order.
        required_approvals: Approvals needed: the largest ``@required_approvals`` among the
            pending approval-forbids (``require_approval`` only; 0 otherwise).
        constraints: ``@constraint_*`` values of the permits that allow (or would allow, once
            approved); when two permits set one name, the first policy id in sort order wins.
        errors: Cedar evaluation or input errors (any error makes the decision ``deny``).
        inputs_digest: SHA-256 (hex) of the canonical JSON of the request (context with
            ``approvals_granted``) and the digest of the entities.
        policy_set_digest: SHA-256 (hex) of the engine's compiled policies.
        duration_us: Time spent in :meth:`PolicyEngine.evaluate`, microseconds.
    """

    id: str
    decision: DecisionKind
    determining_policies: list[str]
    reasons: list[str]
    approver_roles: list[str]
    required_approvals: int
    constraints: dict[str, str]
    errors: list[str]
    inputs_digest: str
    policy_set_digest: str
    duration_us: float

    def to_dict(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict, for storage."""
        return {
            "id": self.id,
            "decision": self.decision,
            "determining_policies": list(self.determining_policies),
            "reasons": list(self.reasons),
            "approver_roles": list(self.approver_roles),
            "required_approvals": self.required_approvals,
            "constraints": dict(self.constraints),
            "errors": list(self.errors),
            "inputs_digest": self.inputs_digest,
            "policy_set_digest": self.policy_set_digest,
            "duration_us": self.duration_us,
        }
