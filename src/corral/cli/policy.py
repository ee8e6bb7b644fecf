"""CLI: ``corral policy test``, ``corral policy explain`` and ``corral policy schema``.

The tenant's effective policy set (the default set plus its applied ``Policy`` documents) is
read from ``GET /v1/policies`` and compiled here, so cases run against exactly what the server
decides with. ``--policies FILE`` adds Policy documents not applied yet (one with the name of an
applied document replaces it, as applying it would); ``--no-applied`` leaves the server out
(the default set of this Corral version plus ``--policies``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml

from corral.cli._client import ApiClient, fail
from corral.contracts import Policy, load_paths
from corral.errors import ContractIssue, InvalidContract
from corral.policy import (
    ACTIONS,
    DEFAULT_POLICIES,
    EXPLAIN_DEFAULT_ATTRIBUTES,
    TOOL_RISK,
    CaseResult,
    EntityRef,
    PolicyEngine,
    PolicySource,
    cedar_schema,
    explain,
    load_cases,
    run_cases,
)
from corral.store import DEFAULT_TENANT

__all__ = ["app"]

app = typer.Typer(
    help="Test and explain policies against the tenant's policy set; print the Cedar schema.",
    no_args_is_help=True,
)

_PoliciesOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--policies",
        help="A Policy YAML file (or directory) not applied yet, tested with the applied set; "
        "repeatable.",
        exists=True,
    ),
]
_AppliedOption = Annotated[
    bool,
    typer.Option(
        "--applied/--no-applied",
        help="Include the tenant's applied Policy documents (read from the server). "
        "--no-applied: this Corral's default set plus --policies only; no server needed.",
    ),
]


class _PolicySet:
    """The policy sources under test, compiled, and the tenant they belong to."""

    def __init__(self, files: Sequence[Path], *, applied: bool) -> None:
        local = _local_policies(files)
        self.tenant = DEFAULT_TENANT
        sources: list[PolicySource] = list(DEFAULT_POLICIES)
        if applied:
            body = ApiClient().get("/v1/policies")
            self.tenant = body["tenant_id"]
            replaced = {policy.metadata.name for policy, _ in local}
            sources = [PolicySource(d["id"], d["text"]) for d in body["defaults"]]
            sources += [
                PolicySource(item["source_id"], item["cedar"])
                for item in body["items"]
                if item["name"] not in replaced
            ]
        files_by_source: dict[str, str] = {}
        for policy, file in local:
            source = PolicySource(
                f"{policy.metadata.name}@{policy.metadata.version or 'local'}", policy.spec.cedar
            )
            files_by_source[source.id] = file
            sources.append(source)
        try:
            self.engine = PolicyEngine(sources)
        except InvalidContract as exc:
            _fail_issues(
                "the policy set does not compile",
                [_in_file(issue, files_by_source) for issue in exc.issues],
            )


def _local_policies(files: Sequence[Path]) -> list[tuple[Policy, str]]:
    if not files:
        return []
    try:
        documents = load_paths(files)
    except InvalidContract as exc:
        _fail_issues("invalid Policy file", exc.issues)
    policies = []
    for document in documents:
        if not isinstance(document.contract, Policy):
            fail(
                f"{document.source}: document {document.index} is a {document.contract.kind}; "
                "--policies takes Policy documents only.",
                code=2,
            )
        policies.append((document.contract, document.source))
    return policies


def _in_file(issue: ContractIssue, files: Mapping[str, str]) -> ContractIssue:
    """A compile issue of a local source, named by its file as well as its source id."""
    file = files.get(issue.file)
    if file is None:
        return issue
    return ContractIssue(f"{file} ({issue.file})", 0, issue.path, issue.line, issue.message)


def _fail_issues(headline: str, issues: Iterable[ContractIssue]) -> NoReturn:
    lines = "\n".join(f"  {issue}" for issue in issues)
    fail(f"{headline}:\n{lines}", code=2)


# -- corral policy test --------------------------------------------------------------------------


@app.command("test")
def test_cases(
    file: Annotated[
        Path,
        typer.Argument(
            help="Case file (YAML): requests and the decisions they must get.",
            exists=True,
            dir_okay=False,
        ),
    ],
    policies: _PoliciesOption = None,
    applied: _AppliedOption = True,
) -> None:
    """Run table-driven policy cases against the tenant's effective policy set.

    Prints one line per case (PASS or FAIL, the request, expected and actual decision, the
    determining policies) and, under a FAIL, what differed. Exit 0 when every case passes, 1
    when one does not, 2 when the case file or a --policies file is malformed.

    The case file format is in ``corral.policy._cases`` (see ``examples/policies/cases.yaml``).

    Example: corral policy test examples/policies/cases.yaml
    """
    try:
        cases = load_cases(file)
    except InvalidContract as exc:
        _fail_issues(f"malformed case file {file}", exc.issues)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", code=2)
    policy_set = _PolicySet(policies or [], applied=applied)
    results = run_cases(policy_set.engine, cases)
    for result in results:
        typer.echo(_case_line(result))
        for mismatch in result.mismatches:
            typer.echo(f"      {mismatch}")
    failed = sum(1 for result in results if not result.passed)
    summary = f"{len(results) - failed} passed, {failed} failed ({file}"
    typer.echo(f"{summary}; {len(policy_set.engine.policies)} policies)")
    if failed:
        raise typer.Exit(1)


def _case_line(result: CaseResult) -> str:
    request, decision = result.case.request, result.decision
    determining = ", ".join(decision.determining_policies) or (
        "evaluation error" if decision.errors else "default deny"
    )
    return (
        f"{'PASS' if result.passed else 'FAIL'}  {result.case.name}: {request.principal} "
        f"{request.action} {request.resource} [stage {request.context.stage}]: expected "
        f"{result.case.expect.decision}, got {decision.decision} (by {determining})"
    )


# -- corral policy explain -----------------------------------------------------------------------


@app.command("explain")
def explain_request(
    principal: Annotated[
        str, typer.Option(help='Who acts: Agent::NAME, User::"user:alice", ServiceAccount::ID.')
    ],
    action: Annotated[str, typer.Option(help=f"The action: {', '.join(ACTIONS)}.")],
    resource: Annotated[str, typer.Option(help="On what: Tool::NAME, Agent::NAME, Model::ID...")],
    attr: Annotated[
        list[str] | None,
        typer.Option(
            help="Entity attribute NAME=VALUE, set on the principal and/or the resource "
            "(whichever has it; prefix principal. or resource. to pick one). Sets: a,b. "
            "Repeatable.",
        ),
    ] = None,
    context: Annotated[
        list[str] | None,
        typer.Option(
            help="Context field NAME=VALUE: stage, tenant, requester, path, url, secret, "
            "workspace, estimated_cost_usd, destructive_allowed, arguments (JSON). Repeatable.",
        ),
    ] = None,
    approved: Annotated[
        list[str] | None,
        typer.Option(help="An approval policy id already approved. Repeatable."),
    ] = None,
    policies: _PoliciesOption = None,
    applied: _AppliedOption = True,
) -> None:
    """Explain how the tenant's policies decide one request, pass by pass.

    Registered agents and tools get their registered attributes (status, risk tier, side
    effect...), other entities neutral defaults; --attr overrides either. The entities used
    are printed first. Context defaults: the tenant's id, stage production, requester
    CORRAL_PRINCIPAL (a principal name; no credential) or user:local-admin.

    Example: corral policy explain --principal Agent::repo-analyst --action tool.call
    --resource Tool::fs.read_file --context path=secrets/key.pem
    """
    policy_set = _PolicySet(policies or [], applied=applied)
    refs = {"principal": _ref(principal, "--principal"), "resource": _ref(resource, "--resource")}
    attrs = {
        role: _base_attrs(ref, policy_set.tenant, registered=applied) for role, ref in refs.items()
    }
    _apply_attr_flags(attrs, refs, attr or [])
    fields: dict[str, Any] = {
        "tenant": policy_set.tenant,
        "stage": "production",
        "requester": os.environ.get("CORRAL_PRINCIPAL", "").strip() or "user:local-admin",
    }
    fields.update(_context_flags(context or []))
    case = {
        "name": "explain",
        "principal": str(refs["principal"]),
        "action": action,
        "resource": str(refs["resource"]),
        "context": fields,
        "entities": [{"uid": str(refs[role]), "attrs": attrs[role]} for role in refs],
        "approvals_granted": list(approved or []),
        "expect": "allow",
    }
    try:
        (loaded,) = load_cases(yaml.safe_dump({"cases": [case]}, sort_keys=False))
    except InvalidContract as exc:
        problems = [f"{i.path.removeprefix('cases[0].')}: {i.message}" for i in exc.issues]
        fail("invalid request: " + "; ".join(problems), code=2)
    typer.echo("Entities:")
    for entity in loaded.entities:
        typer.echo(f"  {entity.uid} {json.dumps(dict(entity.attrs), sort_keys=True)}")
    typer.echo(
        explain(
            policy_set.engine,
            loaded.request,
            loaded.entities,
            approvals_granted=loaded.approvals_granted,
        )
    )


def _ref(text: str, option: str) -> EntityRef:
    try:
        return EntityRef.parse(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", code=2)


def _schema_attributes() -> dict[str, dict[str, Any]]:
    types = cedar_schema()[""]["entityTypes"]
    return {name: dict(body["shape"]["attributes"]) for name, body in types.items()}


def _base_attrs(ref: EntityRef, tenant: str, *, registered: bool) -> dict[str, object]:
    declared = _schema_attributes().get(ref.type)
    if declared is None:
        known = ", ".join(sorted(_schema_attributes()))
        fail(f"unknown entity type {ref.type!r}; the schema's types: {known}.", code=2)
    attrs: dict[str, object] = dict(EXPLAIN_DEFAULT_ATTRIBUTES.get(ref.type, {}))
    if "tenant" in declared:
        attrs["tenant"] = tenant
    if ref.type == "Model":
        provider, _, name = ref.id.partition("/")
        attrs.update(provider=provider, name=name or provider)
    if registered:
        attrs.update(_registered_attrs(ref))
    return attrs


def _registered_attrs(ref: EntityRef) -> dict[str, object]:
    """The attributes the runtime gives a registered agent or tool (empty when unknown)."""
    if ref.type not in ("Agent", "Tool"):
        return {}
    client = ApiClient()
    path = "/v1/agents" if ref.type == "Agent" else "/v1/tools"
    after = None
    while True:
        page = client.get(path, limit=500, after=after)
        found = next((item for item in page["items"] if item["name"] == ref.id), None)
        if found is not None:
            break
        if page["next"] is None:
            return {}
        after = page["next"]
    if ref.type == "Tool":
        side_effect = found["side_effect"]
        return {"side_effect": side_effect, "kind": found["type"], "risk": TOOL_RISK[side_effect]}
    agent = client.get(f"/v1/agents/{ref.id}")
    return {"owner": agent["owner"], "risk_tier": agent["risk_tier"], "status": agent["status"]}


def _split(flag: str, option: str) -> tuple[str, str]:
    name, sep, value = flag.partition("=")
    if not sep or not name.strip():
        fail(f"{option} {flag!r}: write NAME=VALUE.", code=2)
    return name.strip(), value


def _apply_attr_flags(
    attrs: dict[str, dict[str, object]], refs: Mapping[str, EntityRef], flags: Sequence[str]
) -> None:
    schema = _schema_attributes()
    for flag in flags:
        name, value = _split(flag, "--attr")
        role, dot, rest = name.partition(".")
        targets = [role] if dot and role in refs else list(refs)
        name = rest if dot and role in refs else name
        matched = [t for t in targets if name in schema[refs[t].type]]
        if not matched:
            where = " or ".join(
                f"{refs[t].type} ({', '.join(schema[refs[t].type])})" for t in targets
            )
            fail(f"--attr {flag!r}: no attribute {name!r} on {where}.", code=2)
        for target in matched:
            attrs[target][name] = _typed(value, schema[refs[target].type][name], flag)


def _typed(value: str, declared: Mapping[str, Any], flag: str) -> object:
    """An ``--attr`` value as its schema type: String, Long, Boolean or Set (``a,b``)."""
    kind = declared.get("type")
    if kind == "Set":
        return [item.strip() for item in value.split(",") if item.strip()]
    if kind == "Boolean":
        if value.lower() not in ("true", "false"):
            fail(f"--attr {flag!r}: write true or false.", code=2)
        return value.lower() == "true"
    if kind == "Long":
        try:
            return int(value)
        except ValueError:
            fail(f"--attr {flag!r}: write a whole number.", code=2)
    return value


def _context_flags(flags: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for flag in flags:
        name, value = _split(flag, "--context")
        if name == "arguments":
            try:
                fields[name] = json.loads(value)
            except ValueError:
                fail(f"--context {flag!r}: arguments is a JSON object.", code=2)
        else:
            fields[name] = value
    return fields


# -- corral policy schema ------------------------------------------------------------------------


@app.command("schema")
def schema() -> None:
    """Print the Cedar schema (JSON) policies are validated and evaluated against."""
    typer.echo(json.dumps(ApiClient().get("/v1/policies/schema"), indent=2))
