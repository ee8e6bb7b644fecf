"""The policy engine: Cedar policies compiled once, three-way decisions per request.

Cedar reports the satisfied policies of the winning effect only (the forbids when it denies),
so two Cedar calls would be needed to learn which permits match under a forbid. Instead the
engine keeps a *probe* form of the policies in which every policy, forbids included, is a
``permit`` under its own id: one Cedar call returns every policy whose scope and conditions
hold, and the combination rules (see :class:`PolicyEngine`) are applied to that set. Cedar
evaluates each policy independently of the others, so this is the outcome of the rules' two
passes for one call (``tests/policy/test_engine.py`` checks it against the two passes run with
plain Cedar). Cedar is given only the policies whose scope can match the request
(:mod:`corral.policy._slicing`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from time import perf_counter_ns
from types import MappingProxyType
from typing import Any, Final, Literal

import cedarpy

from corral.errors import ContractIssue, InvalidContract, InvalidRequest
from corral.policy._schema import cedar_schema
from corral.policy._slicing import PolicySlicer
from corral.policy._types import (
    CompiledPolicy,
    DecisionKind,
    Entity,
    EntitySet,
    PolicyDecision,
    PolicyKind,
    PolicyRequest,
    PolicySource,
    canonical_json,
    sha256_hex,
)

__all__ = ["PolicyEngine"]

DEFAULT_APPROVER_ROLE: Final = "approver"
MAX_REQUIRED_APPROVALS: Final = 10
_CONSTRAINT_PREFIX: Final = "constraint_"
_PATH_MARKER: Final = "\0corral:path\0"
"""Stands for the path in a context text written once for many paths (no path has a NUL)."""
_EVALUATION_ERROR = re.compile(r"^error while evaluating policy `(?P<policy_id>[^`]*)`")
_MATCH_CACHE_SIZE: Final = 4096
"""Cedar results an engine remembers (by inputs digest) before it forgets them all."""


@dataclass(frozen=True, slots=True)
class _Match:
    """Every policy whose scope and conditions hold for one request, and Cedar's errors."""

    matched: tuple[str, ...]
    errors: tuple[str, ...]
    inputs_digest: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: DecisionKind
    determining: list[str]
    reasons: list[str]
    approver_roles: list[str] = field(default_factory=list)
    required_approvals: int = 0
    constraints: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class PolicyEngine:
    """Cedar policies compiled and validated once; decides requests with Corral's rules.

    Cedar itself decides only ``Allow`` or ``Deny`` (a matching ``forbid`` overrides every
    ``permit``; nothing matching denies). Corral adds a third outcome, ``require_approval``,
    with annotations (DESIGN.md, "Governance"):

    * a forbid without ``@decision`` is a *deny-forbid*;
    * a forbid with ``@decision("require_approval")`` is an *approval-forbid*, optionally with
      ``@approver_role("approver")`` (comma-separated roles; default ``approver``),
      ``@required_approvals("2")`` (1-10; default 1) and ``@reason("...")``;
    * a permit may carry ``@constraint_<name>("value")`` annotations, returned as
      ``constraints[name]`` when it allows (``@constraint_max_calls("3")`` ->
      ``{"max_calls": "3"}``).

    Combination rules of :meth:`evaluate`, in order:

    1. an evaluation error -> ``deny`` (fail closed);
    2. a deny-forbid matched -> ``deny``;
    3. only approval-forbids matched -> evaluate again with them assumed granted; when that
       second pass allows, ``require_approval``, otherwise ``deny`` (nobody is asked to approve
       what would be denied anyway);
    4. a permit matched and no forbid -> ``allow``;
    5. nothing matched -> ``deny`` (default deny).

    Approval-forbids whose ids are in ``approvals_granted`` are removed before evaluation.

    Example:
        ```python
        from corral.policy import (
            DEFAULT_POLICIES, Entity, EntityRef, PolicyContext, PolicyEngine, PolicyRequest
        )

        engine = PolicyEngine(DEFAULT_POLICIES)
        bot = Entity(
            EntityRef("Agent", "support-bot"),
            {"tenant": "acme", "owner": "ops", "risk_tier": "low", "status": "active"},
        )
        tool = Entity(
            EntityRef("Tool", "fs.write_file"),
            {"tenant": "acme", "owner": "ops", "side_effect": "write", "risk": "low",
             "kind": "builtin"},
        )
        context = PolicyContext(tenant="acme", stage="production", requester="alice")
        request = PolicyRequest(bot.uid, "tool.call", tool.uid, context)

        decision = engine.evaluate(request, [bot, tool])
        assert decision.decision == "require_approval"
        assert decision.approver_roles == ["approver"]
        approved = engine.evaluate(
            request, [bot, tool], approvals_granted=decision.determining_policies
        )
        assert approved.decision == "allow"
        ```

    Args:
        sources: The policies. Ids must be unique across sources.
        schema: Cedar JSON schema; default :func:`corral.policy.cedar_schema`.

    Raises:
        InvalidContract: A policy does not parse, is a template, has no id, reuses an id,
            misuses a Corral annotation, or does not validate against the schema. One
            :class:`~corral.errors.ContractIssue` per problem, ``file`` = the source id,
            ``path`` = the policy id, ``message`` = Cedar's message or ours.
    """

    def __init__(
        self, sources: Iterable[PolicySource], *, schema: Mapping[str, Any] | None = None
    ) -> None:
        schema_dict = dict(schema) if schema is not None else cedar_schema()
        schema_json = json.dumps(schema_dict)
        try:
            self._schema = cedarpy.Schema.from_json_str(schema_json)
        except ValueError as exc:
            issue = ContractIssue("<schema>", 0, "schema", None, f"invalid Cedar schema: {exc}")
            raise InvalidContract([issue]) from exc
        policies: dict[str, CompiledPolicy] = {}
        bodies: dict[str, dict[str, Any]] = {}
        issues: list[ContractIssue] = []
        for source in sources:
            issues.extend(self._compile_source(source, policies, bodies))
        if issues:
            raise InvalidContract(issues)
        self._policies = MappingProxyType(policies)
        self._approval_ids = frozenset(
            pid for pid, policy in policies.items() if policy.kind == "require_approval"
        )
        self._digest = sha256_hex(canonical_json(bodies))
        self._path_readers = frozenset(
            pid for pid, body in bodies.items() if _reads_context(body.get("conditions"), "path")
        )
        probe = {pid: {**body, "effect": "permit"} for pid, body in bodies.items()}
        self._slicer = PolicySlicer(probe, schema_dict)
        self._matches: dict[str, _Match] = {}

    @property
    def policies(self) -> Mapping[str, CompiledPolicy]:
        """The compiled policies by id, in source order (read-only)."""
        return self._policies

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON (Cedar's JSON policy format) of all policies."""
        return self._digest

    @property
    def schema(self) -> cedarpy.Schema:
        """The parsed Cedar schema the policies were validated against."""
        return self._schema

    def entities(self, entities: Iterable[Entity]) -> EntitySet:
        """Parse and check entities once, to reuse them across :meth:`evaluate` calls.

        Args:
            entities: The entities; uids must be unique.

        Returns:
            An :class:`EntitySet` bound to nothing but the schema; reuse it freely.

        Raises:
            InvalidRequest: An attribute value has no Cedar type, a uid repeats, or an entity
                does not match the schema (Cedar's message says which).
        """
        try:
            documents = sorted((entity.to_cedar() for entity in entities), key=_uid_key)
        except TypeError as exc:
            raise InvalidRequest(f"Entity attribute cannot be passed to Cedar: {exc}") from exc
        text = canonical_json(documents)
        try:
            handle = cedarpy.Entities.from_json_str(text, self._schema)
        except ValueError as exc:
            detail = self._entities_error(text) or str(exc)
            raise InvalidRequest(
                f"Entities do not match the Cedar schema: {detail}; "
                "see corral.policy.cedar_schema()."
            ) from exc
        return EntitySet(handle=handle, digest=sha256_hex(text), size=len(documents))

    def _entities_error(self, text: str) -> str | None:
        """Cedar's full message for entities it refused.

        ``cedarpy.Entities.from_json_str`` raises only the headline ("entity does not conform
        to the schema"); ``is_authorized`` given the same text reports the cause (which
        attribute, which type), so ask it. Only runs on the error path.
        """
        probe_request = {
            "principal": {"type": "User", "id": ""},
            "action": {"type": "Action", "id": ""},
            "resource": {"type": "Tool", "id": ""},
            "context": {},
        }
        result = cedarpy.is_authorized(probe_request, "", text, schema=self._schema)
        prefix = f"failed to parse entities from:\n{text}: "
        for error in result.diagnostics.errors:
            if error.startswith(prefix):
                return error.removeprefix(prefix)
        return None

    def evaluate(
        self,
        request: PolicyRequest,
        entities: EntitySet | Iterable[Entity],
        *,
        approvals_granted: Iterable[str] = (),
    ) -> PolicyDecision:
        """Decide one request with the combination rules (see the class docstring).

        Never raises for bad input: an entity or context that Cedar refuses is an error, and
        an error denies (fail closed), with Cedar's message in ``errors``.

        Args:
            request: The request.
            entities: The principal, the resource and any parents they are ``in``; an
                :class:`EntitySet` from :meth:`entities` skips re-parsing.
            approvals_granted: Ids of approval-forbids people have already approved for this
                request; those policies are removed before evaluation. Ids of other policies
                are ignored.

        Returns:
            The decision, with its id, reasons and digests.
        """
        started = perf_counter_ns()
        match = self._match(request, entities, frozenset(approvals_granted))
        outcome = self._decide(request, match)
        return PolicyDecision(
            id=f"pdec_{os.urandom(16).hex()}",
            decision=outcome.decision,
            determining_policies=outcome.determining,
            reasons=outcome.reasons,
            approver_roles=outcome.approver_roles,
            required_approvals=outcome.required_approvals,
            constraints=outcome.constraints,
            errors=outcome.errors,
            inputs_digest=match.inputs_digest,
            policy_set_digest=self._digest,
            duration_us=(perf_counter_ns() - started) / 1000,
        )

    def decide_paths(
        self,
        request: PolicyRequest,
        entities: EntitySet | Iterable[Entity],
        paths: Sequence[str],
        *,
        approvals_granted: Iterable[str] = (),
    ) -> list[DecisionKind]:
        """Decide ``request`` once for each of ``paths`` as ``context.path``, in one Cedar call.

        The combination rules of :meth:`evaluate`, without building or storing decisions: a
        tool that walks a directory judges each entry with the decision its call passed
        (see ``corral.gateway.tools._guard``). One batched Cedar call costs about a third of
        as many :meth:`evaluate` calls.

        Args:
            request: The decided request; only ``context.path`` changes.
            entities: As for :meth:`evaluate`.
            paths: Workspace-relative paths.
            approvals_granted: As for :meth:`evaluate`.

        Returns:
            One decision per path, in order (``deny`` for all on any error: fail closed).
        """
        granted = frozenset(approvals_granted)
        # The context text is the same but for the path: write it once around a marker.
        marked = dataclasses.replace(request.context, path=_PATH_MARKER)
        try:
            head, tail = marked.cedar_json(granted).split(encode_basestring(_PATH_MARKER))
            entity_set = self._entity_set(entities)
            cedar_slice = self._slicer.slice(
                request.action,
                (request.principal.type, request.principal.id),
                (request.resource.type, request.resource.id),
            )
            principal, resource = request.principal.to_cedar(), request.resource.to_cedar()
            action = {"type": "Action", "id": request.action}
            results = cedarpy.is_authorized_batch(
                [
                    {
                        "principal": principal,
                        "action": action,
                        "resource": resource,
                        "context": f"{head}{encode_basestring(posixpath.normpath(path))}{tail}",
                    }
                    for path in paths
                ],
                cedar_slice.policy_set,
                entity_set.handle,
                schema=self._schema,
            )
        except Exception:  # bad input or Cedar refusing it: all deny, as evaluate would
            return ["deny"] * len(paths)
        removed = granted & self._approval_ids
        decisions: list[DecisionKind] = []
        for result in results:
            matched, errors = _read_result(result, cedar_slice.names, removed)
            decisions.append(self._decide(request, _Match(matched, errors, "")).decision)
        return decisions

    def reads_path(self, request: PolicyRequest) -> bool:
        """Whether a policy that can apply to ``request`` may read ``context.path``.

        ``False`` means every value of ``context.path`` gets the same decision for this
        principal, action and resource, so a tool that judges many paths (the entries of a
        directory) need not ask again for each. Conservative: a policy that reads ``context``
        as a whole counts as reading ``path``.
        """
        if not self._path_readers:
            return False
        try:
            cedar_slice = self._slicer.slice(
                request.action,
                (request.principal.type, request.principal.id),
                (request.resource.type, request.resource.id),
            )
        except ValueError:
            return True
        return any(name in self._path_readers for name in cedar_slice.names.values())

    # -- compiling ---------------------------------------------------------------------------

    def _compile_source(
        self,
        source: PolicySource,
        policies: dict[str, CompiledPolicy],
        bodies: dict[str, dict[str, Any]],
    ) -> list[ContractIssue]:
        def issue(path: str, message: str) -> ContractIssue:
            return ContractIssue(source.id, 0, path, None, message)

        try:
            document = json.loads(cedarpy.policies_to_json_str(source.text))
        except ValueError as exc:
            return [issue(source.id, f"Cedar cannot parse the policy text: {exc}")]
        if document.get("templates"):
            return [issue(source.id, "templates (?principal, ?resource) are not supported")]
        static: dict[str, dict[str, Any]] = document.get("staticPolicies", {})
        issues: list[ContractIssue] = []
        ids: dict[str, str] = {}
        for number, (cedar_id, body) in enumerate(static.items(), start=1):
            annotations = body.get("annotations") or {}
            policy_id = annotations.get("id") or (source.id if len(static) == 1 else None)
            if policy_id is None:
                message = (
                    f"policy number {number} has no @id; in a source of several, each needs one"
                )
                issues.append(issue(source.id, message))
                continue
            ids[cedar_id] = policy_id
            if policy_id in policies:
                other = policies[policy_id].source_id
                message = f"policy id {policy_id!r} is already used in {other!r}; make it unique"
                issues.append(issue(policy_id, message))
                continue
            compiled, problems = _compile_policy(source.id, policy_id, body["effect"], annotations)
            issues.extend(issue(policy_id, problem) for problem in problems)
            policies[policy_id] = compiled
            bodies[policy_id] = body
        issues.extend(self._validate(source, ids))
        return issues

    def _validate(self, source: PolicySource, ids: Mapping[str, str]) -> list[ContractIssue]:
        """Cedar's strict validation of ``source`` against the schema, in Corral's ids."""
        result = cedarpy.validate_policies(source.text, self._schema)
        issues = []
        for error in result.errors:
            policy_id = ids.get(error.policy_id, source.id)
            message = error.error.replace(f"`{error.policy_id}`", f"`{policy_id}`")
            issues.append(ContractIssue(source.id, 0, policy_id, None, message))
        return issues

    # -- evaluating --------------------------------------------------------------------------

    def _entity_set(self, entities: EntitySet | Iterable[Entity]) -> EntitySet:
        return entities if isinstance(entities, EntitySet) else self.entities(entities)

    def _match(
        self,
        request: PolicyRequest,
        entities: EntitySet | Iterable[Entity],
        granted: frozenset[str],
    ) -> _Match:
        """Ask Cedar, once, which policies hold (see the module docstring)."""
        try:
            context_json, request_json = _request_texts(request, granted)
        except (TypeError, AttributeError, ArithmeticError) as exc:
            digest = sha256_hex(canonical_json({"invalid_request": repr(request)}))
            return _Match((), (f"The request is invalid: {exc}",), digest)
        try:
            entity_set = self._entity_set(entities)
        except InvalidRequest as exc:
            digest = sha256_hex(f'{{"entities_sha256":null,"request":{request_json}}}')
            return _Match((), (exc.message,), digest)
        digest = sha256_hex(f'{{"entities_sha256":"{entity_set.digest}","request":{request_json}}}')
        # Cedar is a pure function of the policies (fixed for this engine), the request and
        # the entities, and the digest names the last two (granted approvals are in the
        # context): the same inputs match the same policies. Each call still gets its own
        # decision (id, row); only the Cedar evaluation is reused.
        cached = self._matches.get(digest)
        if cached is not None:
            return cached
        cedar_request = {
            "principal": request.principal.to_cedar(),
            "action": {"type": "Action", "id": request.action},
            "resource": request.resource.to_cedar(),
            "context": context_json,
        }
        try:
            cedar_slice = self._slicer.slice(
                request.action,
                (request.principal.type, request.principal.id),
                (request.resource.type, request.resource.id),
            )
            result = cedarpy.is_authorized(
                cedar_request, cedar_slice.policy_set, entity_set.handle, schema=self._schema
            )
        except Exception as exc:  # cedarpy raises ValueError, TypeError...: all deny
            return _Match((), (f"Cedar could not evaluate the request: {exc}",), digest)
        # Granted approval-forbids are out of the set: drop what Cedar says about them.
        removed = granted & self._approval_ids
        matched, errors = _read_result(result, cedar_slice.names, removed)
        match = _Match(matched, errors, digest)
        if not errors:
            if len(self._matches) >= _MATCH_CACHE_SIZE:
                self._matches.clear()
            self._matches[digest] = match
        return match

    def _decide(self, request: PolicyRequest, match: _Match) -> _Outcome:
        if match.errors:
            return _Outcome(
                "deny",
                [],
                ["Policy evaluation failed, so the request is denied (fail closed)."],
                errors=list(match.errors),
            )
        by_kind: dict[PolicyKind, list[CompiledPolicy]] = {
            "permit": [],
            "deny": [],
            "require_approval": [],
        }
        for policy_id in sorted(match.matched):
            policy = self._policies[policy_id]
            by_kind[policy.kind].append(policy)
        denies, approvals, permits = by_kind["deny"], by_kind["require_approval"], by_kind["permit"]
        if denies:
            return _Outcome("deny", _ids(denies), _reasons(denies, "forbidden by policy"))
        if not permits:
            return _Outcome("deny", [], [_default_deny_reason(request, approvals)])
        constraints = _constraints(permits)
        if approvals:
            return _Outcome(
                "require_approval",
                _ids(approvals),
                _reasons(approvals, "approval required by policy"),
                approver_roles=_roles(approvals),
                required_approvals=max(policy.required_approvals for policy in approvals),
                constraints=constraints,
            )
        return _Outcome(
            "allow",
            _ids(permits),
            _reasons(permits, "permitted by policy"),
            constraints=constraints,
        )


def _reads_context(node: Any, attribute: str) -> bool:
    """Whether a policy's conditions (Cedar's JSON form) may read ``context.<attribute>``.

    ``context.x``, ``context["x"]`` and ``context has x`` read ``x`` only; any other use of
    ``context`` (compared or passed whole) may read anything.
    """
    if isinstance(node, list):
        return any(_reads_context(item, attribute) for item in node)
    if not isinstance(node, dict):
        return False
    for operator in (".", "has"):
        inner = node.get(operator)
        if isinstance(inner, dict) and inner.get("left") == {"Var": "context"}:
            return inner.get("attr") == attribute
    if node.get("Var") == "context":
        return True
    return any(_reads_context(value, attribute) for value in node.values())


def _request_texts(request: PolicyRequest, granted: frozenset[str]) -> tuple[str, str]:
    """The canonical JSON of the context and of the whole request.

    Written out rather than encoded from dicts: the context is canonical text already and
    this runs on every decision.

    Raises:
        TypeError: A field does not have its declared type.
    """
    context_json = request.context.cedar_json(granted)
    request_json = (
        f'{{"action":{{"id":{encode_basestring(request.action)},"type":"Action"}},'
        f'"context":{context_json},"principal":{request.principal.canonical_json()},'
        f'"resource":{request.resource.canonical_json()}}}'
    )
    return context_json, request_json


def _read_result(
    result: cedarpy.AuthzResult, names: Mapping[str, str], removed: frozenset[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Cedar's satisfied policies and errors, in Corral's policy ids, without ``removed``."""
    errors = []
    for error in result.diagnostics.errors:
        cedar_id = _error_policy(error)
        if cedar_id is not None and cedar_id in names:
            if names[cedar_id] in removed:
                continue
            error = error.replace(f"`{cedar_id}`", f"`{names[cedar_id]}`", 1)
        errors.append(error)
    matched = []
    for cedar_id in result.diagnostics.reasons:
        if cedar_id not in names:  # cannot happen; refuse rather than guess
            errors.append(f"Cedar named an unknown policy {cedar_id!r}")
        elif names[cedar_id] not in removed:
            matched.append(names[cedar_id])
    return tuple(matched), tuple(errors)


def _uid_key(document: Mapping[str, Any]) -> tuple[str, str]:
    uid = document["uid"]
    return (uid["type"], uid["id"])


def _error_policy(error: str) -> str | None:
    found = _EVALUATION_ERROR.match(error)
    return found.group("policy_id") if found else None


def _compile_policy(
    source_id: str,
    policy_id: str,
    effect: Literal["permit", "forbid"],
    annotations: Mapping[str, str],
) -> tuple[CompiledPolicy, list[str]]:
    """Read Corral's annotations of one policy; return it and what is wrong with them."""
    problems: list[str] = []
    kind = _policy_kind(effect, annotations.get("decision"), problems)
    roles, required = _approvals(kind, annotations, problems)
    constraints = {
        name.removeprefix(_CONSTRAINT_PREFIX): value
        for name, value in annotations.items()
        if name.startswith(_CONSTRAINT_PREFIX)
    }
    if constraints and effect != "permit":
        problems.append("@constraint_* annotations only apply to permits")
    compiled = CompiledPolicy(
        id=policy_id,
        source_id=source_id,
        effect=effect,
        kind=kind,
        annotations=MappingProxyType(dict(annotations)),
        reason=annotations.get("reason") or None,
        approver_roles=roles,
        required_approvals=required,
        constraints=MappingProxyType(constraints),
    )
    return compiled, problems


def _policy_kind(
    effect: Literal["permit", "forbid"], decision: str | None, problems: list[str]
) -> PolicyKind:
    approval = decision == "require_approval"
    if decision is not None and not approval:
        problems.append(
            f"@decision({decision!r}) is unknown; the only value is "
            "'require_approval' (a forbid without @decision denies)"
        )
    if approval and effect != "forbid":
        problems.append('@decision("require_approval") belongs on a forbid, not a permit')
    if effect == "permit":
        return "permit"
    return "require_approval" if approval else "deny"


def _approvals(
    kind: PolicyKind, annotations: Mapping[str, str], problems: list[str]
) -> tuple[tuple[str, ...], int]:
    """``@approver_role`` (comma-separated) and ``@required_approvals`` of an approval-forbid."""
    if kind != "require_approval":
        for name in ("approver_role", "required_approvals"):
            if name in annotations:
                problems.append(
                    f'@{name} only applies to a forbid with @decision("require_approval")'
                )
        return (), 0
    roles_text = annotations.get("approver_role", DEFAULT_APPROVER_ROLE)
    roles = tuple(role.strip() for role in roles_text.split(",") if role.strip())
    if not roles:
        problems.append("@approver_role names no role")
    return roles, _required_approvals(annotations.get("required_approvals", "1"), problems)


def _required_approvals(text: str, problems: list[str]) -> int:
    if text.isdigit() and 1 <= int(text) <= MAX_REQUIRED_APPROVALS:
        return int(text)
    problems.append(
        f"@required_approvals({text!r}) must be a whole number from 1 to {MAX_REQUIRED_APPROVALS}"
    )
    return 1


def _ids(policies: Sequence[CompiledPolicy]) -> list[str]:
    return [policy.id for policy in policies]


def _reasons(policies: Sequence[CompiledPolicy], generic: str) -> list[str]:
    return [policy.reason or f"{generic} {policy.id!r}" for policy in policies]


def _roles(policies: Sequence[CompiledPolicy]) -> list[str]:
    roles: dict[str, None] = {}
    for policy in policies:
        roles.update(dict.fromkeys(policy.approver_roles))
    return list(roles)


def _constraints(permits: Sequence[CompiledPolicy]) -> dict[str, str]:
    constraints: dict[str, str] = {}
    for policy in permits:
        for name, value in policy.constraints.items():
            constraints.setdefault(name, value)
    return constraints


def _default_deny_reason(request: PolicyRequest, approvals: Sequence[CompiledPolicy]) -> str:
    reason = (
        f"No policy permits {request.action!r} by {request.principal} on {request.resource} "
        "(default deny)"
    )
    if approvals:
        ids = ", ".join(repr(policy.id) for policy in approvals)
        reason += f"; approval policies {ids} matched, but approving would not allow it"
    return reason + "."
