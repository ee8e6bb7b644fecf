"""A governed platform for the invariant tests: counting probe tools, a scripted model, the API.

The probe tools are builtins that record every execution, so a test can prove that a refused
call never ran. The model plays ``World.script`` in order, then answers ``done``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from conftest import PrincipalKeys, superuser_transaction
from corral.api import create_app
from corral.audit._tables import AuditEventRow
from corral.contracts import Tool, parse_document
from corral.gateway.tools._fs import BuiltinTool
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.registry import apply_documents
from corral.runtime import create_run, get_run, list_steps
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import Settings
from corral.testing import ScriptedModel
from corral.testing._scripted import ScriptStep

PROBES = {
    "probe.read": "read",
    "probe.other": "read",
    "probe.write": "write",
    "probe.destroy": "destructive",
}
"""The probe tools and their side effects."""


class Probe:
    """Builtin tools that count their executions: ``(tool name, arguments)`` in order."""

    def __init__(self) -> None:
        self.executions: list[tuple[str, dict[str, Any]]] = []

    def count(self, name: str | None = None) -> int:
        """Executions of ``name`` (of every probe when ``None``)."""
        return sum(1 for tool, _ in self.executions if name in (None, tool))

    def builtins(self) -> dict[str, BuiltinTool]:
        return {name: self._builtin(name, effect) for name, effect in PROBES.items()}

    def _builtin(self, name: str, side_effect: str) -> BuiltinTool:
        async def run(arguments: dict[str, Any], _workspace: Path | None, **_: Any) -> str:
            self.executions.append((name, dict(arguments)))
            return f"{name} ran"

        contract = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": name, "version": "1.0.0"},
                "spec": {
                    "description": f"A probe that records its calls ({side_effect}).",
                    "side_effect": side_effect,
                    "input_schema": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "n": {"type": "integer"}},
                        "additionalProperties": False,
                    },
                },
            }
        )
        return BuiltinTool(contract, run)


@dataclass
class World:
    """A started platform with the probes, its API (no background worker) and the script."""

    platform: Platform
    client: httpx.AsyncClient
    probe: Probe
    script: list[ScriptStep] = field(default_factory=list)

    async def apply(self, *documents: dict[str, Any], tenant_id: str = "default") -> None:
        """Apply documents through the registry, as ``user:test``."""
        async with self.platform.store.transaction(tenant_id) as session:
            await apply_documents(
                session,
                [parse_document(d) for d in documents],
                tenant_id=tenant_id,
                actor="user:test",
            )

    async def start(
        self, agent: str = "repo-analyst", *, tenant_id: str = "default", **kw: Any
    ) -> str:
        """Create a run as the API does (policy decides ``agent.invoke``); its id."""
        kw.setdefault("stage", "dev")
        kw.setdefault("requested_by", "user:test")
        kw.setdefault("task", "Probe things.")
        async with self.platform.store.transaction(tenant_id) as session:
            run = await create_run(
                session,
                tenant_id=tenant_id,
                agent_name=agent,
                governance=self.platform.governance,
                workspaces=self.platform.workspaces,
                **kw,
            )
        return run.id

    async def drive(self) -> None:
        """Let a worker execute every runnable run until none is left."""
        await self.platform.worker.run_until_idle()

    async def execute(self, *steps: ScriptStep, agent: str = "repo-analyst", **kw: Any) -> str:
        """Start a run whose model plays ``steps``, drive it; the run's id."""
        self.script[:] = list(steps)
        run_id = await self.start(agent, **kw)
        await self.drive()
        return run_id

    async def run(self, run_id: str, tenant_id: str = "default") -> RunRow:
        async with self.platform.store.read(tenant_id) as session:
            return await get_run(session, run_id, tenant_id=tenant_id)

    async def calls(self, run_id: str, tenant_id: str = "default") -> list[ToolCallRow]:
        async with self.platform.store.read(tenant_id) as session:
            steps = await list_steps(session, run_id, tenant_id=tenant_id)
        return [call for _, calls in steps for call in calls]

    async def decisions(self, **where: Any) -> list[PolicyDecisionRow]:
        async with self.platform.store.read(where.get("tenant_id", "default")) as session:
            query = select(PolicyDecisionRow).filter_by(**where)
            return list(
                (await session.execute(query.order_by(PolicyDecisionRow.created_at))).scalars()
            )

    async def decision(self, decision_id: str | None) -> PolicyDecisionRow | None:
        if decision_id is None:
            return None
        async with self.platform.store.read("default") as session:
            return await session.get(PolicyDecisionRow, decision_id)

    async def events(self, tenant_id: str = "default", **where: Any) -> list[AuditEventRow]:
        async with self.platform.store.read(tenant_id) as session:
            query = select(AuditEventRow).filter_by(tenant_id=tenant_id, **where)
            return list((await session.execute(query.order_by(AuditEventRow.seq))).scalars())

    async def tamper(self, tenant_id: str, seq: int, **values: Any) -> None:
        """Change a stored audit event behind the application's back.

        On PostgreSQL the append-only trigger is bypassed as a superuser would, with
        ``session_replication_role = replica``: the chain itself must catch the edit.
        """
        async with superuser_transaction(self.platform) as connection:
            await connection.execute(
                AuditEventRow.__table__.update()
                .where(AuditEventRow.tenant_id == tenant_id, AuditEventRow.seq == seq)
                .values(**values)
            )


MEMBERS = {"user:alice": ["builder"], "user:mallory": ["builder"]}
"""Roles of the world's other principals: builders, so their requests reach the policies."""


@contextlib.asynccontextmanager
async def open_world(settings: Settings) -> AsyncIterator[World]:
    """A :class:`World` on ``settings``' store, closed after.

    Its client authenticates as ``user:local-admin`` with a real API key, or as the principal a
    request's ``X-Corral-Principal`` header names, with its roles in :data:`MEMBERS`.
    """
    governance = settings.governance.model_copy(update={"roles": MEMBERS})
    settings = settings.model_copy(update={"governance": governance})
    probe, script = Probe(), []
    model = ScriptedModel(
        lambda _request: script.pop(0) if script else ScriptedModel.answer("done")
    )
    platform = Platform(settings, providers={"scripted": model}, builtins=probe.builtins())
    app = create_app(platform, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    auth = PrincipalKeys(platform)
    await auth.key("user:local-admin")  # before the test counts audit events
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://corral", auth=auth
    )
    try:
        yield World(platform, client, probe, script)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def policy_document(name: str, cedar: str, description: str = "Test policy.") -> dict[str, Any]:
    """A Policy document."""
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"description": description, "cedar": cedar},
    }
