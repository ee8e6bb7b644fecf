"""Agents: the list, and an agent's versions, stage bindings, runs, promote and rollback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request
from starlette.responses import Response

from corral.errors import InvalidRequest, PolicyRefused
from corral.evals import latest_eval
from corral.portal._routes import router
from corral.portal._web import (
    PORTAL_PATH,
    form_of,
    platform_of,
    redirect,
    render,
    require,
    session_of,
)
from corral.registry import (
    AgentVersionRow,
    agent_version_diff,
    latest_agent_versions,
    list_agent_versions,
    list_agents,
    promote,
    rollback,
    stage_bindings,
    stage_versions,
)
from corral.runtime import list_runs

__all__ = ["DiffLine", "agent_detail", "agents", "diff_lines", "promote_version", "rollback_stage"]


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff and its kind, the line's CSS class (``diff-{kind}``)."""

    kind: str
    """``add``, ``del``, ``hunk`` (``@@``), ``file`` (``---``/``+++``) or ``ctx``."""
    text: str


def diff_lines(diff: str) -> list[DiffLine]:
    """Classify each line of a unified diff for the page (the template escapes the text)."""
    lines = []
    for text in diff.splitlines():
        if text.startswith(("---", "+++")):
            kind = "file"
        elif text.startswith("@@"):
            kind = "hunk"
        elif text.startswith("+"):
            kind = "add"
        elif text.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        lines.append(DiffLine(kind, text))
    return lines


def _diff_pair(request: Request, versions: list[AgentVersionRow]) -> tuple[str, str] | None:
    """The two versions to compare: ``?diff=OLD..NEW``, ``?from=&to=``, else the two newest.

    Raises:
        InvalidRequest: ``diff`` without ``..``, or only one of ``from`` and ``to``.
    """
    query = request.query_params
    if "diff" in query:
        old, dots, new = query["diff"].partition("..")
        if not dots or not old.strip() or not new.strip():
            raise InvalidRequest(
                f"diff={query['diff']!r} is not OLD..NEW; write two versions, e.g. "
                "?diff=1.0.0..1.0.1."
            )
        return old.strip()[:32], new.strip()[:32]
    old, new = query.get("from", "").strip(), query.get("to", "").strip()
    if old or new:
        if not (old and new):
            raise InvalidRequest("Give both from= and to= (two versions of this agent).")
        return old[:32], new[:32]
    if len(versions) < 2:
        return None
    return versions[1].version, versions[0].version


def _spec(document: dict[str, Any]) -> dict[str, Any]:
    spec = document.get("spec", {})
    return spec if isinstance(spec, dict) else {}


@router.get("/agents")
async def agents(request: Request) -> Response:
    """Agents with owner, risk tier, status, latest version and what each stage runs.

    Permission ``agents.read``; the stage bindings also need ``releases.read`` (as on the
    agent's page), otherwise the column is left out.
    """
    session = await session_of(request)
    require(session, "agents.read")
    tenant_id = session.principal.tenant_id
    platform = platform_of(request)
    show_stages = session.principal.can("releases.read")
    async with platform.store.read(tenant_id) as db:
        rows = await list_agents(db, tenant_id=tenant_id, limit=500)
        latest = await latest_agent_versions(db, rows, tenant_id=tenant_id)
        bound = (
            await stage_versions(
                db,
                [row.id for row in rows],
                tenant_id=tenant_id,
                stages=platform.settings.governance.stages,
            )
            if show_stages
            else {}
        )
    listed = [
        {
            "agent": row,
            "spec": _spec(latest[row.id].document) if row.id in latest else {},
            "stages": bound.get(row.id, []),
        }
        for row in rows
    ]
    context = {"title": "Agents", "agents": listed, "show_stages": show_stages}
    return render(request, "agents.html", context)


@router.get("/agents/{name}")
async def agent_detail(request: Request, name: str) -> Response:
    """An agent's versions, what each stage runs, its latest runs; promote and roll back.

    With two versions or more, the page shows the unified diff of two versions' specs
    (canonical YAML): ``?diff=OLD..NEW`` or ``?from=OLD&to=NEW``, by default the two newest.
    An unknown version is a 404 page naming the versions that exist.
    """
    session = await session_of(request)
    require(session, "agents.read")
    principal = session.principal
    platform = platform_of(request)
    stages = platform.settings.governance.stages
    async with platform.store.read(principal.tenant_id) as db:
        versions = await list_agent_versions(db, name, tenant_id=principal.tenant_id)
        bindings = (
            await stage_bindings(db, name, tenant_id=principal.tenant_id, stages=stages)
            if principal.can("releases.read")
            else []
        )
        runs = await list_runs(db, tenant_id=principal.tenant_id, agent_name=name, limit=20)
        pair = _diff_pair(request, versions)
        diff = (
            await agent_version_diff(db, name, *pair, tenant_id=principal.tenant_id) if pair else ""
        )
    context = {
        "title": f"Agent {name}",
        "name": name,
        "versions": versions,
        "spec": _spec(versions[0].document) if versions else {},
        "bindings": bindings,
        "stages": stages,
        "runs": runs,
        "can_promote": principal.can("releases.promote"),
        "diff_from": pair[0] if pair else "",
        "diff_to": pair[1] if pair else "",
        "diff": diff_lines(diff),
    }
    return render(request, "agent.html", context)


@router.post("/agents/{name}/promote")
async def promote_version(request: Request, name: str) -> Response:
    """Promote as ``POST /v1/agents/{name}/promotions`` does (``releases.promote``)."""
    session = await session_of(request)
    require(session, "releases.promote")
    form = await form_of(request)
    platform = platform_of(request)
    principal = session.principal
    governance = platform.settings.governance
    try:
        async with platform.store.transaction(principal.tenant_id) as db:
            await promote(
                db,
                platform.governance,
                tenant_id=principal.tenant_id,
                actor=principal.principal,
                agent_name=name,
                version=form.get("version", ""),
                stage=form.get("stage", ""),
                stages=governance.stages,
                approval_ttl=timedelta(seconds=governance.approval_ttl_seconds),
                actor_roles=principal.roles,
                evals=latest_eval,
                gate_stages=governance.eval_gate_stages,
                require_eval_for_production=governance.require_eval_for_production,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, principal.tenant_id)  # evidence, as REST
        raise
    return redirect(request, f"{PORTAL_PATH}/agents/{name}")


@router.post("/agents/{name}/rollback")
async def rollback_stage(request: Request, name: str) -> Response:
    """Roll a stage back as ``POST /v1/agents/{name}/rollback`` does (``releases.promote``)."""
    session = await session_of(request)
    require(session, "releases.promote")
    form = await form_of(request)
    platform = platform_of(request)
    principal = session.principal
    try:
        async with platform.store.transaction(principal.tenant_id) as db:
            await rollback(
                db,
                platform.governance,
                tenant_id=principal.tenant_id,
                actor=principal.principal,
                agent_name=name,
                stage=form.get("stage", ""),
                stages=platform.settings.governance.stages,
                actor_roles=principal.roles,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, principal.tenant_id)
        raise
    return redirect(request, f"{PORTAL_PATH}/agents/{name}")
