"""Shared pieces of the MCP gateway tests: real upstream servers, documents, direct calls.

The npm upstreams (server-everything, server-filesystem, server-memory) are installed, pinned,
by ``scripts/install-mcp-servers.sh`` into ``.cache/npm-mcp`` the first time a test needs them
(idempotent: later runs cost a stamp check). Without npm they skip, except in CI
(``CI`` or ``CORRAL_TEST_REQUIRE_MCP_SERVERS=1``), where they fail. The Python upstreams
(mcp-server-git, mcp-server-time) come with the ``dev`` extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import register
from corral.contracts import AgentTools
from corral.gateway.tools import ResolvedTool, ToolCallContext, ToolResult
from corral.platform import Platform
from corral.registry._tables import ToolRow, ToolVersionRow

REPO = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO / "scripts" / "install-mcp-servers.sh"
REQUIRE = os.environ.get("CI") or os.environ.get("CORRAL_TEST_REQUIRE_MCP_SERVERS") == "1"


@pytest.fixture(scope="session")
def npm_bin() -> Path:
    """Directory holding ``mcp-server-everything``, ``-filesystem`` and ``-memory``."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        if REQUIRE:
            pytest.fail("node and npm are needed for the MCP upstream tests")
        pytest.skip("node/npm not installed: the npm MCP upstreams cannot be installed")
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        message = f"scripts/install-mcp-servers.sh failed:\n{done.stderr[-2000:]}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return Path(done.stdout.strip().splitlines()[-1]) / "node_modules" / ".bin"


def python_bin(name: str) -> str:
    """A console script of the test environment (``mcp-server-git``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extra (`pip install -e .[dev]`)")
    return str(path)


def echo_server(
    name: str = "echo", *, env: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """An McpServer document running ``corral.testing.mcp_echo_server`` over stdio."""
    return server_document(
        name,
        command=sys.executable,
        args=["-m", "corral.testing.mcp_echo_server"],
        env=env or {},
        **spec,
    )


def server_document(name: str, **spec: Any) -> dict[str, Any]:
    """An McpServer document (stdio unless ``transport`` says otherwise)."""
    body: dict[str, Any] = {
        "description": f"The {name} MCP server.",
        "transport": "stdio",
        "connect_timeout_seconds": 60,
        "call_timeout_seconds": 60,
    }
    body.update(spec)
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "McpServer",
        "metadata": {"name": name},
        "spec": body,
    }


async def registered_tools(platform: Platform, *names: str) -> dict[str, ResolvedTool]:
    """The latest version of each named tool, as the runtime resolves it."""
    async with platform.store.read("default") as session:
        rows = await session.execute(
            select(ToolRow.name, ToolVersionRow.document)
            .join(ToolVersionRow, ToolVersionRow.tool_id == ToolRow.id)
            .where(ToolRow.tenant_id == "default", ToolRow.name.in_(names))
            .where(ToolVersionRow.version == ToolRow.latest_version)
        )
        return {name: ResolvedTool.from_document(dict(doc)) for name, doc in rows}


async def call(
    platform: Platform, name: str, arguments: dict[str, Any], **context: Any
) -> ToolResult:
    """Call one tool through the tool gateway, outside a run (no policy decision)."""
    tools = await registered_tools(platform, name)
    ctx = ToolCallContext("default", None, 0, 0, None, frozenset(tools), **context)
    return await platform.tools.call(
        ctx, tools, name, arguments, agent_tools=AgentTools(allowed=["*"])
    )


async def register_and_sync(platform: Platform, document: dict[str, Any]) -> Any:
    """Apply an McpServer document and sync it."""
    from corral.gateway.mcp import sync_server

    await register(platform, document)
    return await sync_server(
        platform.store,
        platform.mcp,
        document["metadata"]["name"],
        tenant_id="default",
        actor="user:test",
    )
