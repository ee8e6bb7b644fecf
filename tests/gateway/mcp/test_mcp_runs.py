"""MCP tools in managed runs and through the gateway: results, errors, progress, a dying
upstream, Streamable HTTP with a brokered credential, and the client capabilities we declare.

Upstream: ``corral.testing.mcp_echo_server`` (stdio, and Streamable HTTP in a subprocess).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _mcp_world import call, echo_server, register_and_sync, server_document
from pydantic import SecretStr
from sqlalchemy import select

from conftest import PlatformFactory, agent_document, register
from corral.audit._tables import AuditEventRow
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.runtime import create_run
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import SecretsSettings, Settings
from corral.testing import ScriptedModel

TOKEN = "tok-7f3e9a1c-upstream-bearer"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with a master key for secrets (PostgreSQL needs a configured one)."""
    key = SecretStr(base64.b64encode(os.urandom(32)).decode())
    return settings.model_copy(update={"secrets": SecretsSettings(master_key=key)})


def echo_twice(request: ModelRequest) -> ToolCall | FinalAnswer:
    """Echo once, then answer with what the tool said."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        return ToolCall("call_0", "echo.echo", {"text": "hello from the run"})
    return FinalAnswer(f"the tool said: {results[-1]}")


async def run_agent(platform: Any, agent: str = "repo-analyst") -> RunRow:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name=agent,
            task="Use the tool.",
            requested_by="user:test",
            governance=platform.governance,
        )
    await platform.worker.run_until_idle()
    async with platform.store.read("default") as session:
        row = await session.get(RunRow, run.id)
        assert row is not None
        return row


async def calls_of(platform: Any, run_id: str) -> list[ToolCallRow]:
    async with platform.store.read("default") as session:
        rows = await session.execute(select(ToolCallRow).where(ToolCallRow.run_id == run_id))
        return list(rows.scalars())


async def test_a_managed_run_calls_an_mcp_tool_through_the_gateway(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform(scripted=ScriptedModel(echo_twice))
    await register_and_sync(platform, echo_server())
    await register(platform, agent_document(tools={"allowed": ["echo.*"]}))
    run = await run_agent(platform)
    assert run.status == "SUCCEEDED", run.terminal_reason
    assert "hello from the run" in (run.output or "")
    [done] = await calls_of(platform, run.id)
    assert (done.tool_name, done.status, done.tool_version) == ("echo.echo", "COMPLETED", "0.1.0")
    assert done.output == "hello from the run"
    async with platform.store.read("default") as session:
        audited = await session.execute(
            select(AuditEventRow.subject, AuditEventRow.outcome).where(
                AuditEventRow.run_id == run.id, AuditEventRow.action == "tool.call"
            )
        )
        assert [tuple(a) for a in audited] == [("tool:echo.echo", "completed")]


async def test_is_error_results_are_failed_tool_results_and_the_run_goes_on(
    make_platform: PlatformFactory,
) -> None:
    def fail_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
        results = [m.content for m in request.messages if m.role == "tool"]
        if not results:
            return ToolCall("call_0", "echo.fail", {"message": "disk on fire"})
        return FinalAnswer(f"saw: {results[-1]}")

    platform = await make_platform(scripted=ScriptedModel(fail_then_answer))
    await register_and_sync(platform, echo_server())
    await register(platform, agent_document(tools={"allowed": ["echo.*"]}))
    run = await run_agent(platform)
    assert run.status == "SUCCEEDED"
    [failed] = await calls_of(platform, run.id)
    assert (failed.status, failed.error_type) == ("FAILED", "mcp_tool_error")
    assert failed.error == "'echo.fail' failed (MCP server 'echo'): disk on fire"
    assert "disk on fire" in (run.output or "")


async def test_progress_notifications_reach_the_callers_callback(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    await register_and_sync(platform, echo_server())
    events: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append((value, total, message))

    result = await call(platform, "echo.progress", {"steps": 3}, progress=progress)
    assert (result.status, result.output) == ("COMPLETED", "done")
    assert events == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]
    # Without a callback the call works the same.
    assert (await call(platform, "echo.progress", {"steps": 2})).output == "done"


async def test_the_client_declares_no_roots_sampling_or_elicitation(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    await register_and_sync(platform, echo_server())
    result = await call(platform, "echo.client_capabilities", {})
    assert result.status == "COMPLETED"
    declared = json.loads(result.output)
    assert not {"roots", "sampling", "elicitation"} & set(declared), declared


async def test_a_crashing_upstream_fails_the_call_naming_the_server_then_restarts(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    await register_and_sync(platform, echo_server())
    first_pid = (await call(platform, "echo.pid", {})).output
    starts = platform.mcp.starts

    crashed = await call(platform, "echo.crash", {})
    assert (crashed.status, crashed.error_type) == ("FAILED", "mcp_connection_closed")
    assert "MCP server 'echo' closed the connection" in crashed.output

    again = await call(platform, "echo.pid", {})
    assert again.status == "COMPLETED" and again.output != first_pid
    assert platform.mcp.starts == starts + 1
    assert (await call(platform, "echo.echo", {"text": "still here"})).output == "still here"


async def test_an_upstream_that_dies_while_idle_is_restarted_for_the_next_call(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    await register_and_sync(platform, echo_server())
    pid = int((await call(platform, "echo.pid", {})).output)
    os.kill(pid, 9)
    session = platform.mcp._sessions[("default", "echo")]
    for _ in range(200):  # the transport notices the exit (EOF on stdout)
        if not session.alive:
            break
        await asyncio.sleep(0.05)
    assert not session.alive
    # Nothing was sent to the dead process: the call goes to a new one and succeeds.
    result = await call(platform, "echo.pid", {})
    assert result.status == "COMPLETED" and int(result.output) != pid


# --- Streamable HTTP with a brokered bearer token -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_echo(tmp_path: Path) -> Iterator[str]:
    """The echo server over Streamable HTTP, requiring ``Authorization: Bearer TOKEN``."""
    port = _free_port()
    log = (tmp_path / "http-echo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.testing.mcp_echo_server", "--http", f"127.0.0.1:{port}"],
        env={**os.environ, "CORRAL_ECHO_BEARER": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the HTTP echo server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


SECRET_POLICY = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "remote-echo-token"},
    "spec": {
        "description": "The agent may use the echo server's token through its tools.",
        "cedar": (
            '@id("remote-echo-token")\n'
            'permit (principal == Agent::"repo-analyst", action == Action::"secret.use", '
            'resource) when { context has secret && context.secret == "echo-token" };'
        ),
    },
}


def remote_echo(request: ModelRequest) -> ToolCall | FinalAnswer:
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        return ToolCall("call_0", "remote.echo", {"text": "over http"})
    return FinalAnswer(f"the tool said: {results[-1]}")


async def test_streamable_http_upstream_with_a_bearer_token_from_the_broker(
    make_platform: PlatformFactory, http_echo: str
) -> None:
    platform = await make_platform(scripted=ScriptedModel(remote_echo))
    await platform.secrets.set("default", "echo-token", TOKEN, actor="user:test")
    document = server_document(
        "remote",
        transport="streamable_http",
        url=http_echo,
        headers={"Authorization": "Bearer ${secret:echo-token}"},
    )
    result = await register_and_sync(platform, document)
    assert "remote.echo" in result.added
    await register(platform, agent_document(tools={"allowed": ["remote.*"]}), SECRET_POLICY)
    platform.governance.invalidate("default")

    run = await run_agent(platform)
    assert run.status == "SUCCEEDED", run.terminal_reason
    assert "over http" in (run.output or "")
    [done] = await calls_of(platform, run.id)
    assert done.status == "COMPLETED"
    async with platform.store.read("default") as session:
        events = (await session.execute(select(AuditEventRow.details))).scalars().all()
    assert TOKEN not in json.dumps(list(events)) + json.dumps(
        [d.output for d in await calls_of(platform, run.id)]
    )

    # A rotated secret takes effect on the next call: a new session with the new (here wrong)
    # token, which the upstream refuses; the error names the server, never the token.
    await platform.secrets.set("default", "echo-token", "wrong-token", actor="user:test")
    run = await run_agent(platform)
    [refused] = await calls_of(platform, run.id)
    assert refused.status == "FAILED"
    assert "MCP server 'remote'" in (refused.error or "")
    assert TOKEN not in (refused.error or "") and "wrong-token" not in (refused.error or "")


async def test_an_agent_without_secret_use_cannot_start_the_upstream(
    make_platform: PlatformFactory, http_echo: str
) -> None:
    platform = await make_platform(scripted=ScriptedModel(remote_echo))
    await platform.secrets.set("default", "echo-token", TOKEN, actor="user:test")
    document = server_document(
        "remote",
        transport="streamable_http",
        url=http_echo,
        headers={"Authorization": "Bearer ${secret:echo-token}"},
    )
    await register_and_sync(platform, document)
    await register(platform, agent_document(tools={"allowed": ["remote.*"]}))
    run = await run_agent(platform)
    [denied] = await calls_of(platform, run.id)
    assert denied.status == "DENIED"
    assert "echo-token" in (denied.error or "") and TOKEN not in (denied.error or "")
