"""Policies: the tenant's applied set and a "would this be allowed?" form.

The form asks the question ``corral policy explain`` asks, of the same engine the tenant's
decisions are made with (:meth:`corral.policy.Governance.engine`), and answers with
:func:`corral.policy.explain` and the decision :meth:`corral.policy.PolicyEngine.evaluate` gives.
Registered agents and tools get their registered attributes, other entities the CLI's neutral
defaults; nothing is stored (a question is not a decision).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from corral.errors import InvalidContract, NotFound
from corral.policy import (
    ACTIONS,
    DEFAULT_POLICIES,
    EXPLAIN_DEFAULT_ATTRIBUTES,
    TOOL_RISK,
    EntityRef,
    applied_policies,
    cedar_schema,
    explain,
    load_cases,
    policy_sources,
)
from corral.portal._routes import router
from corral.portal._web import form_of, platform_of, render, require, session_of
from corral.registry import get_agent_version, list_tools
from corral.tenancy import Principal

__all__ = ["explain_request", "policies"]


_EXAMPLE = {
    "principal": 'Agent::"repo-analyst"',
    "action": "tool.call",
    "resource": 'Tool::"fs.read_file"',
    "context": '{"stage": "production", "path": "README.md"}',
}


async def _page(request: Request, form: dict[str, str], answer: dict[str, Any] | None) -> Response:
    session = await session_of(request)
    require(session, "policies.read")
    tenant_id = session.principal.tenant_id
    async with platform_of(request).store.read(tenant_id) as db:
        rows = await applied_policies(db, tenant_id=tenant_id)
    applied = []
    for policy, version in rows:
        source = policy_sources([dict(version.document)])[-1]
        applied.append({"policy": policy, "version": version, "source": source})
    context = {
        "title": "Policies",
        "defaults": DEFAULT_POLICIES,
        "applied": applied,
        "actions": ACTIONS,
        "form": form,
        "answer": answer,
    }
    return render(
        request,
        "policies.html",
        context,
        status_code=400 if answer and answer.get("problem") else 200,
    )


@router.get("/policies")
async def policies(request: Request) -> Response:
    """The default set and the applied Policy documents (permission ``policies.read``)."""
    return await _page(request, dict(_EXAMPLE), None)


@router.post("/policies/explain")
async def explain_request(request: Request) -> Response:
    """Explain how the tenant's policies decide a request (``policies.read``, as the CLI)."""
    session = await session_of(request)
    require(session, "policies.read")
    posted = await form_of(request)
    form = {field: posted.get(field, "").strip() for field in _EXAMPLE}
    try:
        answer = await _answer(request, session.principal, form)
    except _Problem as exc:
        answer = {"problem": str(exc)}
    return await _page(request, form, answer)


class _Problem(ValueError):
    """A form field that cannot make a request; shown next to the form."""


async def _answer(request: Request, asker: Principal, form: dict[str, str]) -> dict[str, Any]:
    tenant_id = asker.tenant_id
    refs = {role: _ref(form[role], role) for role in ("principal", "resource")}
    context = _context(form["context"])
    context.update(tenant=tenant_id)
    context.setdefault("stage", "production")
    context.setdefault("requester", asker.id)  # the CLI: CORRAL_PRINCIPAL
    platform = platform_of(request)
    async with platform.store.read(tenant_id) as db:
        entities = [
            {"uid": str(ref), "attrs": await _attrs(db, ref, tenant_id)} for ref in refs.values()
        ]
        engine = await platform.governance.engine(tenant_id, session=db)
    case = {
        "name": "explain",
        "principal": str(refs["principal"]),
        "action": form["action"],
        "resource": str(refs["resource"]),
        "context": context,
        "entities": entities,
        "expect": "allow",
    }
    try:
        (loaded,) = load_cases(yaml.safe_dump({"cases": [case]}, sort_keys=False))
    except InvalidContract as exc:
        problems = [f"{i.path.removeprefix('cases[0].')}: {i.message}" for i in exc.issues]
        raise _Problem("Invalid request: " + "; ".join(problems)) from exc
    decision = engine.evaluate(loaded.request, loaded.entities)
    return {
        "decision": decision,
        "explanation": explain(engine, loaded.request, loaded.entities),
        "entities": loaded.entities,
    }


def _ref(text: str, role: str) -> EntityRef:
    try:
        return EntityRef.parse(text)
    except ValueError as exc:
        raise _Problem(f"{role.capitalize()}: {exc}") from exc


def _context(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise _Problem(f"Context is not JSON ({exc}); write an object such as {{}}.") from exc
    if not isinstance(value, dict):
        raise _Problem('Context is a JSON object, such as {"stage": "production"}.')
    return value


async def _attrs(db: AsyncSession, ref: EntityRef, tenant_id: str) -> dict[str, object]:
    """The entity's attributes: schema defaults, then what the registry knows of it."""
    declared = cedar_schema()[""]["entityTypes"].get(ref.type)
    if declared is None:
        raise _Problem(f"Unknown entity type {ref.type!r}.")
    attrs = dict(EXPLAIN_DEFAULT_ATTRIBUTES.get(ref.type, {}))
    if "tenant" in declared["shape"]["attributes"]:
        attrs["tenant"] = tenant_id
    if ref.type == "Model":
        provider, _, name = ref.id.partition("/")
        attrs.update(provider=provider, name=name or provider)
    if ref.type == "Agent":
        try:
            agent, version = await get_agent_version(db, ref.id, tenant_id=tenant_id)
        except NotFound:
            return attrs
        spec = version.document.get("spec", {})
        attrs.update(
            owner=spec.get("owner", "unknown"),
            risk_tier=spec.get("risk_tier", "medium"),
            status=agent.status,
        )
    if ref.type == "Tool":
        attrs.update(await _tool_attrs(db, ref.id, tenant_id))
    return attrs


async def _tool_attrs(db: AsyncSession, name: str, tenant_id: str) -> dict[str, object]:
    """A registered tool's attributes, as the runtime gives them (empty when unknown)."""
    after = None
    while True:
        rows = await list_tools(db, tenant_id=tenant_id, limit=500, after=after)
        for tool, _version in rows:
            if tool.name == name:
                side_effect = tool.side_effect
                return {
                    "side_effect": side_effect,
                    "kind": tool.type,
                    "risk": TOOL_RISK[side_effect],
                }
        if len(rows) < 500:
            return {}
        after = rows[-1][0].name
