"""What the portal tests share: a platform whose agent's write tool needs approval, keys, logins."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conftest import agent_document, register
from corral.api import create_app
from corral.approvals import Approval, list_approvals
from corral.contracts import Tool, parse_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.registry import apply_documents, bind_stage, get_agent, get_agent_version
from corral.runtime import create_run, get_run
from corral.settings import Settings
from corral.tenancy import issue_key
from corral.testing import ScriptedModel

REQUESTER = "user:alice"
ROLES = {
    "user:alice": ["builder", "operator"],
    "user:bob": ["approver"],
    "user:dave": ["viewer"],
    "user:erin": ["admin"],
    "user:eve": [],
}
"""Alice starts and cancels runs; Bob approves; Dave only reads; Erin administers the tenant
(approves tools); Eve is a member without a role."""


class Ledger:
    """``ledger.write`` (``side_effect: write``): needs approval in ``production``."""

    def __init__(self) -> None:
        self.executions: list[int] = []

    def builtins(self) -> dict[str, BuiltinTool]:
        contract = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": "ledger.write", "version": "1.0.0"},
                "spec": {
                    "description": "Write entry n to the ledger.",
                    "type": "builtin",
                    "side_effect": "write",
                    "input_schema": {
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                        "required": ["n"],
                        "additionalProperties": False,
                    },
                },
            }
        )
        return {"ledger.write": BuiltinTool(contract, self._write)}

    async def _write(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        self.executions.append(arguments["n"])
        return f"entry {arguments['n']} written"


def write_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    """Write entry 7 once, then answer with what the tool said."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        return ToolCall("call_0", "ledger.write", {"n": 7})
    return FinalAnswer(f"done: {results[-1]}")


async def seed(platform: Platform) -> dict[str, str]:
    """Register the agent bound to ``production``; return an API key per principal of ROLES."""
    await register(platform, agent_document(tools={"allowed": ["ledger.*"]}))
    async with platform.store.transaction("default") as session:
        agent = await get_agent(session, "repo-analyst", tenant_id="default")
        _, version = await get_agent_version(
            session, "repo-analyst", agent.latest_version, tenant_id="default"
        )
        await bind_stage(
            session, agent, version, "production", actor="user:test", tenant_id="default"
        )
    keys = {}
    for principal, roles in ROLES.items():
        keys[principal] = await issue_key(
            platform.store,
            server_secret=platform.identity.server_secret,
            tenant_id="default",
            principal=principal,
            roles=roles,
            name=f"portal-{principal.partition(':')[2]}",
        )
    return keys


async def apply_in_acme(portal: Portal, *documents: dict[str, Any]) -> None:
    """Apply each document in tenant ``acme`` (builtin tools registered there first)."""
    await portal.platform.register_builtin_tools("acme")
    for document in documents:
        async with portal.platform.store.transaction("acme") as session:
            await apply_documents(
                session, [parse_document(document)], tenant_id="acme", actor="user:test"
            )


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    match = _CSRF.search(page)
    assert match is not None, page[:2000]
    return match.group(1)


async def login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Log in through the login form; returns the response of the form's POST."""
    form = await client.get("/ui/login")
    assert form.status_code == 200
    return await client.post("/ui/login", data={"api_key": key, "csrf_token": csrf_of(form.text)})


@dataclass
class Portal:
    """The started app, its platform, a key per principal of ROLES, and clients to close."""

    platform: Platform
    app: object
    keys: dict[str, str]
    ledger: Ledger
    clients: list[httpx.AsyncClient]

    def client(self, scheme: str = "http") -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url=f"{scheme}://corral",
        )
        self.clients.append(client)
        return client

    async def logged_in(self, principal: str) -> httpx.AsyncClient:
        client = self.client()
        assert (await login(client, self.keys[principal])).status_code == 303
        return client

    async def paused_run(self) -> tuple[str, Approval]:
        async with self.platform.store.transaction("default") as session:
            run = await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task="Write entry 7.",
                requested_by=REQUESTER,
                stage="production",
                governance=self.platform.governance,
            )
        await self.platform.worker.run_until_idle()
        assert await self.status(run.id) == "AWAITING_APPROVAL"
        (approval,) = await list_approvals(
            self.platform.store, tenant_id="default", run_id=run.id, status="pending"
        )
        return run.id, approval

    async def status(self, run_id: str) -> str:
        async with self.platform.store.read("default") as session:
            return str((await get_run(session, run_id, tenant_id="default")).status)


@asynccontextmanager
async def open_portal(settings: Settings) -> AsyncIterator[Portal]:
    """The app (no worker loop: runs move with ``worker.run_until_idle()``), seeded, started."""
    ledger = Ledger()
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(write_then_answer)},
        builtins=ledger.builtins(),
    )
    app = create_app(platform, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    found = Portal(platform, app, await seed(platform), ledger, [])
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()
        await lifespan.__aexit__(None, None, None)
