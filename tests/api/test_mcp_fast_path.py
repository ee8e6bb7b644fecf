"""``/mcp``'s fast path answers exactly as the SDK's transport does.

The endpoint answers ``ping``, ``tools/list`` and ``tools/call`` on the handshake-era wire
itself (``McpEndpoint.fast_path``); every request here is sent twice to the same application,
once on the fast path and once through the SDK's stateless transport, and the two answers must
match: status, content type and JSON body (ids a call mints, such as its ``call_id``, aside).
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _mcp_live import NOTES_APPEND

from corral.api import create_app
from corral.api.mcp import MCP_PATH, McpEndpoint
from corral.platform import Platform
from corral.settings import McpEndpointSettings, Settings
from corral.tenancy import issue_key

pytestmark = pytest.mark.timeout(180)

MINTED = ("call_id", "trace_id", "policy_decision_id", "approval_id")
"""``_meta`` keys holding ids each call mints anew."""


class _Served:
    def __init__(self, client: httpx.AsyncClient, endpoint: McpEndpoint, key: str) -> None:
        self.client, self.endpoint, self.key = client, endpoint, key

    async def post(self, body: Any, *, fast: bool, **headers: str) -> httpx.Response:
        self.endpoint.fast_path = fast
        sent = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.key}",
            **headers,
        }
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post(MCP_PATH, content=content, headers=sent)


@pytest.fixture
async def served(settings: Settings, workspace: Path) -> AsyncIterator[_Served]:
    settings = settings.model_copy(
        update={"mcp_endpoint": McpEndpointSettings(workspace=workspace)}
    )
    platform = Platform(settings, builtins={"notes.append": NOTES_APPEND})
    app = create_app(platform, run_worker=False)
    [endpoint] = [
        r.app for r in app.router.routes if isinstance(getattr(r, "app", None), McpEndpoint)
    ]  # type: ignore[attr-defined]
    async with app.router.lifespan_context(app):
        key = await issue_key(
            platform.store,
            server_secret=platform.identity.server_secret,
            tenant_id="default",
            principal="service:ide",
            roles=["builder"],
            name="ide",
            kind="service",
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield _Served(client, endpoint, key)


def _comparable(response: httpx.Response) -> tuple[int, str | None, Any]:
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = response.text
    meta = (body or {}).get("result", {}).get("_meta") if isinstance(body, dict) else None
    if isinstance(meta, dict):
        for name in MINTED:
            if f"dev.corral/{name}" in meta:
                meta[f"dev.corral/{name}"] = "<minted>"
        content = body["result"].get("content") or []
        for part in content:  # the untrusted-output wrapper names the call id
            if isinstance(meta.get("dev.corral/call_id"), str) and "text" in part:
                part["text"] = part["text"].split('call_id="')[0]
    return response.status_code, response.headers.get("content-type"), body


def _call(name: str, arguments: Any = None, id_: Any = 1) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


REQUESTS: list[tuple[str, Any, dict[str, str]]] = [
    ("ping", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, {}),
    ("ping, string id", {"jsonrpc": "2.0", "id": "a-1", "method": "ping"}, {}),
    (
        "ping with _meta",
        {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"_meta": {"progressToken": 7}}},
        {},
    ),
    ("tools/list", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, {}),
    (
        "tools/list with a cursor",
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "x"}},
        {},
    ),
    ("tools/call", _call("fs.read_file", {"path": "README.md"}), {}),
    ("tools/call, no arguments", _call("fs.list_dir"), {}),
    ("tools/call, invalid arguments", _call("fs.read_file", {"path": 42}), {}),
    ("tools/call, outside the workspace", _call("fs.read_file", {"path": "../x"}), {}),
    ("tools/call, approval", _call("notes.append", {"line": "x"}), {}),
    ("tools/call, unknown tool", _call("fs.delete_all", {}), {}),
    (
        "tools/call, no name",
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"arguments": {}}},
        {},
    ),
    (
        "tools/call, arguments not an object",
        _call("fs.read_file", ["README.md"]),
        {},
    ),
    (
        "tools/call, no params",
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call"},
        {},
    ),
    ("unknown method", {"jsonrpc": "2.0", "id": 6, "method": "tools/frobnicate"}, {}),
    ("notification", {"jsonrpc": "2.0", "method": "notifications/initialized"}, {}),
    ("batch", [{"jsonrpc": "2.0", "id": 7, "method": "ping"}], {}),
    ("malformed JSON", b'{"jsonrpc": "2.0", "id": 1, "method":', {}),
    ("not JSON-RPC 2.0", {"jsonrpc": "1.0", "id": 8, "method": "ping"}, {}),
    ("no protocol version header", {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, {}),
    ("text/plain", {"jsonrpc": "2.0", "id": 10, "method": "ping"}, {"Content-Type": "text/plain"}),
    (
        "JSON after another type",
        {"jsonrpc": "2.0", "id": 10, "method": "ping"},
        {"Content-Type": "text/plain, application/json"},
    ),
    ("accepts no JSON", {"jsonrpc": "2.0", "id": 11, "method": "ping"}, {"Accept": "text/html"}),
]
VERSIONS = ["2025-11-25", "2025-06-18", "2024-11-05", None]


@pytest.mark.parametrize(("label", "body", "headers"), REQUESTS, ids=[r[0] for r in REQUESTS])
async def test_fast_path_answers_as_the_sdk(
    served: _Served, label: str, body: Any, headers: dict[str, str]
) -> None:
    for version in VERSIONS:
        sent = {**headers}
        if version is not None and label != "no protocol version header":
            sent["MCP-Protocol-Version"] = version
        sdk = await served.post(body, fast=False, **sent)
        fast = await served.post(body, fast=True, **sent)
        assert _comparable(fast) == _comparable(sdk), (label, version, fast.text, sdk.text)


async def test_the_fast_path_leaves_the_modern_wire_to_the_sdk(served: _Served) -> None:
    """2026-07-28 requests (and unsupported versions) still get the SDK's checks."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    modern = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    listed = await served.post(body, fast=True, **modern)
    assert listed.status_code == 200, listed.text
    assert listed.json()["result"]["resultType"] == "complete"
    mismatch = await served.post(body, fast=True, **{**modern, "Mcp-Method": "ping"})
    assert mismatch.status_code == 400
    unsupported = await served.post(
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        fast=True,
        **{"MCP-Protocol-Version": "1999-01-01"},
    )
    assert unsupported.status_code == 400
