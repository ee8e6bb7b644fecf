"""Table-driven policy tests and decision explanations.

:func:`load_cases` reads a YAML file of requests and the decisions they must get (the format of
``corral policy test FILE.yaml``); :func:`run_cases` evaluates them; :func:`explain` describes
one decision pass by pass (``corral policy explain``).

Case file format::

    context:                 # optional: context defaults merged into every case's context
      tenant: acme
      requester: alice
    entities:                # optional: entities shared by every case
      - uid: Agent::support-bot            # Type::id, Type::"id" or {type: ..., id: ...}
        attrs: {tenant: acme, owner: ops, risk_tier: low, status: active}
      - uid: Tool::fs.write_file
        attrs: {tenant: acme, owner: ops, side_effect: write, risk: low, kind: builtin}
    cases:
      - name: writes need approval in production
        principal: Agent::support-bot
        action: tool.call
        resource: Tool::fs.write_file
        context: {stage: production}
        approvals_granted: []              # optional: approval policy ids already approved
        entities: []                       # optional: extra entities; same uid replaces
        expect: require_approval           # or a mapping, every key but decision optional:
        # expect:
        #   decision: require_approval
        #   determining_policies: [tool-write-needs-approval]
        #   approver_roles: [approver]
        #   required_approvals: 1
        #   constraints: {}

Entity attribute values are strings, integers, booleans, lists (Cedar sets) and mappings
(records); Cedar has no floating point.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from corral.contracts import Lines, YamlDocument, dotted, line_of, load_yaml, read_yaml_file
from corral.errors import ContractIssue, InvalidContract
from corral.policy._engine import PolicyEngine
from corral.policy._schema import PolicyAction
from corral.policy._types import (
    DecisionKind,
    Entity,
    EntityRef,
    EntitySet,
    PolicyContext,
    PolicyDecision,
    PolicyKind,
    PolicyRequest,
)

__all__ = ["CaseExpectation", "CaseResult", "PolicyCase", "explain", "load_cases", "run_cases"]

_Lines = Lines


@dataclass(frozen=True, slots=True)
class CaseExpectation:
    """What a case's decision must be; ``None`` fields are not checked.

    Attributes:
        decision: The expected decision.
        determining_policies: Expected determining policy ids, in any order.
        approver_roles: Expected approver roles, in any order.
        required_approvals: Expected number of approvals.
        constraints: Expected constraints, exactly.
    """

    decision: DecisionKind
    determining_policies: tuple[str, ...] | None = None
    approver_roles: tuple[str, ...] | None = None
    required_approvals: int | None = None
    constraints: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One request of a case file and the decision it must get.

    Attributes:
        name: The case's name, unique in its file.
        request: The request.
        entities: Its entities (the file's shared ones, then the case's own).
        expect: The expectation.
        approvals_granted: Approval policy ids already approved.
    """

    name: str
    request: PolicyRequest
    entities: tuple[Entity, ...]
    expect: CaseExpectation
    approvals_granted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case.

    Attributes:
        case: The case.
        decision: The decision the engine made.
        mismatches: One line per expectation the decision missed; empty when it passed.
    """

    case: PolicyCase
    decision: PolicyDecision
    mismatches: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether the decision met every expectation."""
        return not self.mismatches


# -- the file format ---------------------------------------------------------------------------


def _entity_ref(value: object) -> EntityRef:
    if isinstance(value, EntityRef):
        return value
    if isinstance(value, str):
        return EntityRef.parse(value)
    if isinstance(value, Mapping) and set(value) == {"type", "id"}:
        return EntityRef(str(value["type"]), str(value["id"]))
    raise ValueError('an entity uid is Type::id, Type::"id" or a mapping with type and id')


_Ref = Annotated[EntityRef, PlainValidator(_entity_ref)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _EntityDoc(_Strict):
    uid: _Ref
    attrs: dict[str, Any] = Field(default_factory=dict)
    parents: list[_Ref] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cedar_typed(self) -> _EntityDoc:
        try:
            self.entity().to_cedar()
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return self

    def entity(self) -> Entity:
        return Entity(self.uid, self.attrs, tuple(self.parents))


class _ContextDoc(_Strict):
    tenant: str
    stage: str
    requester: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    url: str | None = None
    secret: str | None = None
    workspace: str | None = None
    estimated_cost_usd: Decimal = Decimal(0)
    destructive_allowed: bool = False


class _ExpectDoc(_Strict):
    decision: DecisionKind
    determining_policies: list[str] | None = None
    approver_roles: list[str] | None = None
    required_approvals: int | None = None
    constraints: dict[str, str] | None = None


def _expect_shorthand(value: object) -> object:
    """``expect: allow`` is ``expect: {decision: allow}``."""
    return {"decision": value} if isinstance(value, str) else value


class _CaseDoc(_Strict):
    name: Annotated[str, Field(min_length=1)]
    principal: _Ref
    action: PolicyAction
    resource: _Ref
    context: _ContextDoc
    entities: list[_EntityDoc] = Field(default_factory=list)
    approvals_granted: list[str] = Field(default_factory=list)
    expect: Annotated[_ExpectDoc, BeforeValidator(_expect_shorthand)]


class _FileDoc(_Strict):
    context: dict[str, Any] = Field(default_factory=dict)
    entities: list[_EntityDoc] = Field(default_factory=list)
    cases: Annotated[list[_CaseDoc], Field(min_length=1)]


def load_cases(source: str | os.PathLike[str]) -> list[PolicyCase]:
    """Read policy test cases from YAML (format in this module's docstring).

    Args:
        source: A path (``pathlib.Path`` or any ``os.PathLike``) to read, or the YAML text
            itself when a ``str``.

    Returns:
        The cases, in file order.

    Raises:
        InvalidContract: YAML syntax errors, YAML that :func:`corral.contracts.load_yaml`
            refuses (over its size, alias or depth limits, or a duplicate key), unknown or
            invalid fields, or two cases with one name; each issue names the field path
            (``cases[2].expect``) and line.
        OSError: ``source`` is a path that cannot be read.
    """
    if isinstance(source, str):
        text, name = source, "<string>"
    else:
        text, name = read_yaml_file(Path(source), source=os.fspath(source)), os.fspath(source)
    data, lines = _parse_yaml(text, name)
    if not isinstance(data, dict):
        hint = " (a str is read as YAML text; pass a pathlib.Path to read a file)"
        message = f"a case file is a mapping with 'cases', got {type(data).__name__}"
        issue = ContractIssue(name, 0, "", 1, message + (hint if name == "<string>" else ""))
        raise InvalidContract([issue])
    _merge_context_defaults(data)
    try:
        document = _FileDoc.model_validate(data)
    except ValidationError as exc:
        raise InvalidContract(
            [
                ContractIssue(
                    name, 0, dotted(err["loc"]), line_of(lines, err["loc"]), _message(err)
                )
                for err in exc.errors(include_url=False)
            ]
        ) from None
    seen: set[str] = set()
    for index, case in enumerate(document.cases):
        if case.name in seen:
            path = ("cases", index, "name")
            message = f"a second case is named {case.name!r}; give each case its own name"
            raise InvalidContract(
                [ContractIssue(name, 0, dotted(path), line_of(lines, path), message)]
            )
        seen.add(case.name)
    return [_case(document, case) for case in document.cases]


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling)"
    return str(err["msg"])


def _parse_yaml(text: str, name: str) -> tuple[Any, _Lines]:
    [document] = load_yaml(text, source=name, single=True) or [YamlDocument(0, None, {})]
    return document.data, document.lines


def _merge_context_defaults(data: dict[str, Any]) -> None:
    defaults = data.get("context")
    cases = data.get("cases")
    if not isinstance(defaults, dict) or not isinstance(cases, list):
        return
    for case in cases:
        if isinstance(case, dict):
            own = case.get("context")
            case["context"] = {**defaults, **own} if isinstance(own, dict) else dict(defaults)


def _case(document: _FileDoc, case: _CaseDoc) -> PolicyCase:
    entities = {doc.uid: doc.entity() for doc in (*document.entities, *case.entities)}
    context = case.context
    expect = case.expect
    return PolicyCase(
        name=case.name,
        request=PolicyRequest(
            principal=case.principal,
            action=case.action,
            resource=case.resource,
            context=PolicyContext(
                tenant=context.tenant,
                stage=context.stage,
                requester=context.requester,
                arguments=context.arguments,
                path=context.path,
                url=context.url,
                estimated_cost_usd=context.estimated_cost_usd,
                destructive_allowed=context.destructive_allowed,
                secret=context.secret,
                workspace=context.workspace,
            ),
        ),
        entities=tuple(entities.values()),
        expect=CaseExpectation(
            decision=expect.decision,
            determining_policies=_tuple(expect.determining_policies),
            approver_roles=_tuple(expect.approver_roles),
            required_approvals=expect.required_approvals,
            constraints=expect.constraints,
        ),
        approvals_granted=tuple(case.approvals_granted),
    )


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


# -- running and explaining --------------------------------------------------------------------


def run_cases(engine: PolicyEngine, cases: Iterable[PolicyCase]) -> list[CaseResult]:
    """Evaluate each case and compare its decision with the expectation.

    Args:
        engine: The policies under test.
        cases: Cases from :func:`load_cases` or built in code.

    Returns:
        One result per case, in order; ``result.passed`` is ``False`` with ``mismatches``
        saying what differed (including the decision's reasons and errors).
    """
    results = []
    for case in cases:
        decision = engine.evaluate(
            case.request, case.entities, approvals_granted=case.approvals_granted
        )
        results.append(CaseResult(case, decision, tuple(_mismatches(case.expect, decision))))
    return results


def _mismatches(expect: CaseExpectation, decision: PolicyDecision) -> list[str]:
    found = []
    if decision.decision != expect.decision:
        why = "; ".join([*decision.reasons, *decision.errors])
        found.append(f"decision: expected {expect.decision!r}, got {decision.decision!r} ({why})")
    checks: list[tuple[str, object, object]] = [
        (
            "determining_policies",
            _sorted(expect.determining_policies),
            sorted(decision.determining_policies),
        ),
        ("approver_roles", _sorted(expect.approver_roles), sorted(decision.approver_roles)),
        ("required_approvals", expect.required_approvals, decision.required_approvals),
        ("constraints", _dict(expect.constraints), decision.constraints),
    ]
    for name, expected, actual in checks:
        if expected is not None and expected != actual:
            found.append(f"{name}: expected {expected!r}, got {actual!r}")
    return found


def _sorted(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


def _dict(values: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if values is None else dict(values)


def explain(
    engine: PolicyEngine,
    request: PolicyRequest,
    entities: EntitySet | Iterable[Entity],
    *,
    approvals_granted: Iterable[str] = (),
) -> str:
    """Describe, for a person, how ``engine`` decides ``request``.

    Lists the policies whose scope and conditions hold, Cedar's errors, the first pass (all
    policies), the second pass (approval-forbids assumed approved) when there is one, and the
    decision with its reasons: the rules of :meth:`PolicyEngine.evaluate`, step by step.

    Args:
        engine: The policies.
        request: The request.
        entities: Its entities.
        approvals_granted: Approval policy ids already approved.

    Returns:
        Plain text, several lines, no trailing newline.
    """
    granted = frozenset(approvals_granted)
    match = engine._match(request, entities, granted)
    outcome = engine._decide(request, match)
    policies = engine.policies
    context = request.context
    out = [
        f"Request: {request.principal} -> {request.action} -> {request.resource}",
        f"  context: tenant={context.tenant!r} stage={context.stage!r} "
        f"requester={context.requester!r} estimated_cost_usd={context.estimated_cost_usd}",
        f"  approvals granted: {', '.join(sorted(granted)) or 'none'}",
        f"Policies whose conditions hold ({len(match.matched)} of {len(policies)}):",
    ]
    for policy_id in match.matched:
        policy = policies[policy_id]
        label = _KIND_LABELS[policy.kind]
        out.append(f"  {policy_id} ({label}): {policy.reason or '(no @reason)'}")
    if not match.matched:
        out.append("  none")
    out.extend(_passes(engine, match.matched, match.errors))
    out.append(f"Decision: {outcome.decision}")
    out.extend(f"  - {reason}" for reason in outcome.reasons)
    if outcome.decision == "require_approval":
        roles = ", ".join(outcome.approver_roles)
        out.append(
            f"  needs {outcome.required_approvals} approval(s) from role(s) {roles}; "
            f"approve policy id(s) {', '.join(outcome.determining)}"
        )
    if outcome.constraints:
        pairs = ", ".join(f"{name}={value!r}" for name, value in outcome.constraints.items())
        out.append(f"  constraints: {pairs}")
    return "\n".join(out)


_KIND_LABELS: Final[Mapping[PolicyKind, str]] = {
    "permit": "permit",
    "deny": "deny-forbid",
    "require_approval": "approval-forbid",
}


def _passes(engine: PolicyEngine, matched: Sequence[str], errors: Sequence[str]) -> list[str]:
    if errors:
        return [
            "Errors (any error denies, fail closed):",
            *(f"  {error}" for error in errors),
        ]
    kinds = {policy_id: engine.policies[policy_id].kind for policy_id in matched}
    denies = [pid for pid, kind in kinds.items() if kind == "deny"]
    approvals = [pid for pid, kind in kinds.items() if kind == "require_approval"]
    permits = [pid for pid, kind in kinds.items() if kind == "permit"]
    first = "Pass 1, all policies: "
    if denies:
        return [first + f"deny-forbid(s) {', '.join(denies)} hold -> deny; no second pass."]
    if not approvals:
        verdict = f"permit(s) {', '.join(permits)} -> allow" if permits else "default deny"
        return [first + f"no forbid holds; {verdict}."]
    second = f"Pass 2, with {', '.join(approvals)} assumed approved: "
    if permits:
        second += f"permit(s) {', '.join(permits)} -> allow, so the decision is require_approval."
    else:
        second += "no permit holds -> default deny, so nobody is asked to approve."
    return [first + f"only approval-forbid(s) {', '.join(approvals)} hold.", second]
