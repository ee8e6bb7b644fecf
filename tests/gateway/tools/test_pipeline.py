"""The governed-call pipeline: one implementation for managed runs and inbound ``/mcp``.

The same calls go through a managed run (the worker's loop) and through ``/mcp`` (the
in-process ASGI app, an agent key for the same agent): both must leave the same decision rows,
audit events, approval requests and ``execute_tool`` spans. And a store refusing writes mid-call
fails the call with a clear error, leaving nothing of it behind. Every test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import Table, select, text

from conftest import agent_document, register
from corral.api import create_app
from corral.approvals._tables import ApprovalRow
from corral.audit._tables import AuditEventRow
from corral.contracts import Tool
from corral.gateway.tools import BuiltinTool
from corral.observability._tables import SpanRow
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.runtime import create_run, get_run
from corral.runtime._tables import StepRow, ToolCallRow
from corral.settings import McpEndpointSettings, Settings
from corral.store import SYSTEM
from corral.tenancy import ROLES, Principal, create_key
from corral.testing import ScriptedModel

pytestmark = pytest.mark.timeout(180)

_EVENTS = cast(Table, AuditEventRow.__table__)
_SPANS = cast(Table, SpanRow.__table__)
_DECISIONS = cast(Table, PolicyDecisionRow.__table__)
_APPROVALS = cast(Table, ApprovalRow.__table__)
_STEPS = cast(Table, StepRow.__table__)
_CALLS = cast(Table, ToolCallRow.__table__)
ADMIN = Principal(id="user:local-admin", tenant_id="default", roles=frozenset(ROLES), kind="user")
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}

POLICY = """\
@id("pkg-is-private")
@reason("Files under pkg/ are private.")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.read_file")
when { context has path && context.path like "pkg/*" };
"""

# name -> (tool, arguments, decision, tool.call audit outcome or None while it waits)
CASES: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "allowed": ("fs.read_file", {"path": "README.md"}, "allow", "completed"),
    "denied_by_policy": ("fs.read_file", {"path": "pkg/core.py"}, "deny", "denied"),
    "requires_approval": ("fs.list_dir", {"path": "."}, "require_approval", None),
    "tool_error": ("fs.read_file", {"path": "missing.md"}, "allow", "failed"),
}


async def _append_note(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    assert workspace is not None
    with (workspace / "notes.txt").open("a") as notes:
        notes.write(arguments["line"] + "\n")
    return "appended"


NOTES_APPEND = BuiltinTool(
    contract=Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": "notes.append", "version": "1.0.0"},
            "spec": {
                "description": "Append one line to notes.txt in the workspace.",
                "side_effect": "write",
                "input_schema": {
                    "type": "object",
                    "properties": {"line": {"type": "string"}},
                    "required": ["line"],
                },
            },
        }
    ),
    run=_append_note,
)
"""A side-effecting builtin: recorded before it runs."""


@contextlib.asynccontextmanager
async def served(
    settings: Settings, workspace: Path, script: list[Any]
) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    """A platform (no background worker) and an agent-keyed client of its ``/mcp`` in process."""
    settings = settings.model_copy(
        update={"mcp_endpoint": McpEndpointSettings(workspace=workspace, stage="dev")}
    )
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(script)},
        builtins={"notes.append": NOTES_APPEND},
    )
    app = create_app(platform, run_worker=False)
    async with app.router.lifespan_context(app):
        await register(
            platform,
            agent_document(approvals=[{"tools": ["fs.list_dir"], "approver_role": "approver"}]),
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Policy",
                "metadata": {"name": "private-pkg"},
                "spec": {"description": "pkg/ is private.", "cedar": POLICY},
            },
        )
        key = await create_key(
            platform.store,
            ADMIN,
            server_secret=platform.identity.server_secret,
            name="agent-repo-analyst",
            roles=[],
            agent="repo-analyst",
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://localhost",
            headers={**HEADERS, "Authorization": f"Bearer {key.key}"},
        ) as client:
            yield platform, client


async def call_mcp(client: httpx.AsyncClient, name: str, arguments: dict[str, Any]) -> Any:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    response = await client.post("/mcp", content=json.dumps(body))
    assert response.status_code == 200, response.text
    return response.json()


async def rows(platform: Platform, query: Any) -> list[Any]:
    async with platform.store.read("default") as session:
        return list((await session.execute(query)).all())


async def run_managed(platform: Platform, workspace: Path) -> str:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Look.",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    return run.id


def decision_shape(row: Any) -> tuple[Any, ...]:
    return (
        row.action,
        row.principal,
        row.resource,
        row.decision,
        sorted(row.determining_policies),
        row.reasons,
        row.approver_roles,
        row.required_approvals,
        row.errors,
    )


def audit_shape(row: Any) -> tuple[Any, ...]:
    details = row.details or {}
    keys = ("tool", "arguments_digest", "tool_version", "error_type")
    subject = "approval:ID" if row.subject.startswith("approval:apr_") else row.subject
    return (row.action, subject, row.outcome, {k: details.get(k) for k in keys})


def span_shape(row: Any) -> tuple[Any, ...]:
    keys = (
        "gen_ai.operation.name",
        "gen_ai.tool.name",
        "corral.tool.status",
        "corral.tool.version",
        "corral.tool.outcome",
        "error.type",
    )
    return (row.name, row.status, {k: row.attributes.get(k) for k in keys})


def approval_shape(row: Any) -> tuple[Any, ...]:
    return (
        row.kind,
        row.status,
        row.action,
        row.subject,
        row.arguments_redacted,
        row.arguments_digest,
        row.reason,
        row.approver_roles,
        row.required_approvals,
        row.policy_ids,
    )


@pytest.mark.parametrize("case", list(CASES))
async def test_a_call_leaves_the_same_rows_through_a_run_and_through_mcp(
    settings: Settings, workspace: Path, case: str
) -> None:
    tool, arguments, expected_decision, expected_outcome = CASES[case]
    script = [ScriptedModel.call(tool, **arguments), ScriptedModel.answer("done")]
    async with served(settings, workspace, script) as (platform, client):
        run_id = await run_managed(platform, workspace)
        answer = await call_mcp(client, tool, arguments)
        trace_id = answer["result"]["_meta"]["dev.corral/trace_id"]

        async with platform.store.read("default") as session:
            run = await get_run(session, run_id, tenant_id="default")
        tool_decisions = select(_DECISIONS).where(_DECISIONS.c.action == "tool.call")
        run_decisions = await rows(platform, tool_decisions.where(_DECISIONS.c.run_id == run_id))
        mcp_decisions = await rows(platform, tool_decisions.where(_DECISIONS.c.run_id.is_(None)))
        call_events = _EVENTS.c.action.in_(("tool.call", "approval.requested"))
        run_events = await rows(
            platform, select(_EVENTS).where(call_events, _EVENTS.c.run_id == run_id)
        )
        mcp_events = await rows(
            platform, select(_EVENTS).where(call_events, _EVENTS.c.trace_id == trace_id)
        )
        tool_spans = select(_SPANS).where(_SPANS.c.name == f"execute_tool {tool}")
        run_spans = await rows(platform, tool_spans.where(_SPANS.c.run_id == run_id))
        mcp_spans = await rows(platform, tool_spans.where(_SPANS.c.trace_id == trace_id))
        approvals = await rows(platform, select(_APPROVALS).order_by(_APPROVALS.c.created_at))

    # The same decision, for the same principal (the agent), tool and reasons.
    assert [decision_shape(r) for r in run_decisions] == [decision_shape(r) for r in mcp_decisions]
    [decision] = run_decisions
    assert (decision.principal, decision.decision) == ('Agent::"repo-analyst"', expected_decision)
    # The same execute_tool span.
    assert [span_shape(s) for s in run_spans] == [span_shape(s) for s in mcp_spans]
    assert len(run_spans) == 1

    if expected_outcome is None:  # waiting: the same approval request, raised once per path
        assert run.status == "AWAITING_APPROVAL"
        assert answer["result"]["_meta"]["dev.corral/status"] == "APPROVAL_REQUIRED"
        run_request, mcp_request = approvals
        assert (run_request.run_id, mcp_request.run_id) == (run_id, None)
        assert approval_shape(run_request) == approval_shape(mcp_request)
        assert run_request.policy_decision_id == decision.id
        requested = [audit_shape(e) for e in run_events]
        assert requested == [audit_shape(e) for e in mcp_events if e.action != "tool.call"]
        assert [e.subject for e in run_events] == [f"approval:{run_request.id}"]
        assert f"approval:{mcp_request.id}" in [e.subject for e in mcp_events]
        return
    assert run.status == "SUCCEEDED"
    assert answer["result"]["isError"] is (expected_outcome != "completed")
    assert approvals == []
    assert [audit_shape(e) for e in run_events] == [audit_shape(e) for e in mcp_events]
    [event] = run_events
    assert (event.action, event.outcome) == ("tool.call", expected_outcome)
    assert event.policy_decision_id == decision.id


# --- a store refusing writes mid-call ----------------------------------------------------------


async def refuse_writes(platform: Platform, table: str) -> None:
    """From now on every INSERT into ``table`` fails (a full disk, a revoked grant)."""
    message = f"{table} refuses writes (test)"
    if platform.store.dialect == "sqlite":
        statements = [
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ]
    else:
        statements = [
            f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{message}'; END $$",
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION refuse_{table}()",
        ]
    async with platform.store.transaction(SYSTEM) as session:
        for statement in statements:
            await session.execute(text(statement))


async def counts(platform: Platform) -> dict[str, int]:
    tables = (_DECISIONS, _EVENTS, _SPANS, _STEPS, _CALLS)
    return {t.name: len(await rows(platform, select(t.c[0]))) for t in tables}


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("fs.read_file", {"path": "README.md"}), ("notes.append", {"line": "hello"})],
)
async def test_a_store_refusing_writes_fails_the_call_and_leaves_nothing(
    settings: Settings, workspace: Path, tool: str, arguments: dict[str, Any]
) -> None:
    async with served(settings, workspace, []) as (platform, client):
        before = await counts(platform)
        await refuse_writes(platform, "audit_events")
        answer = await call_mcp(client, tool, arguments)
        after = await counts(platform)

    message = json.dumps(answer)
    assert "could not be recorded" in message, message
    assert "audit_events refuses writes (test)" in message
    assert "result" not in answer or answer["result"].get("isError") is True
    # Nothing half-written: no decision, event or span of the call; no effect either.
    assert after == before
    assert not (workspace / "notes.txt").exists()


async def test_a_store_refusing_writes_at_a_checkpoint_leaves_no_half_step(
    settings: Settings, workspace: Path
) -> None:
    script = [ScriptedModel.call("fs.read_file", path="README.md"), ScriptedModel.answer("done")]
    async with served(settings, workspace, script) as (platform, _client):
        async with platform.store.transaction("default") as session:
            run = await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task="Look.",
                requested_by="user:test",
                workspace=str(workspace),
                workspaces=platform.workspaces,
            )
        before = await counts(platform)
        await refuse_writes(platform, "policy_decisions")
        await platform.worker.run_until_idle()
        after = await counts(platform)
        async with platform.store.read("default") as session:
            stored = await get_run(session, run.id, tenant_id="default")
        tool_events = await rows(
            platform,
            select(_EVENTS).where(_EVENTS.c.run_id == run.id, _EVENTS.c.action == "tool.call"),
        )

    # The step's checkpoint (step, call, decision, audit event, span) was one transaction: the
    # refused decision took all of it; the run failed with the store's error, not half a step.
    assert stored.status == "FAILED"
    assert "policy_decisions refuses writes (test)" in (stored.error or "")
    assert tool_events == []
    assert (after["steps"], after["tool_calls"], after["policy_decisions"]) == (
        before["steps"],
        before["tool_calls"],
        before["policy_decisions"],
    )
