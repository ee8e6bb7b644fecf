"""The MCP gateway, outbound: registered upstream MCP servers whose tools agents call.

An ``McpServer`` document says how to reach a server (stdio or Streamable HTTP) and which of
its tools to import; :func:`sync_server` imports them as pinned ``mcp`` tool versions and
quarantines a tool whose definition changed until :func:`approve_tool`; the tool gateway calls
them through :class:`McpExecutor` over a :class:`McpPool` of sessions.
"""

from corral.gateway.mcp._client import McpPool, ProgressCallback, SecretRenderer, upstream_name
from corral.gateway.mcp._executor import McpExecutor, render_result
from corral.gateway.mcp._sync import (
    ACTIVE,
    QUARANTINED,
    McpServerInfo,
    SyncResult,
    ToolPin,
    approve_tool,
    get_server,
    list_servers,
    side_effect_of,
    sync_server,
    tool_digest,
    tool_name_for,
)

__all__ = [
    "ACTIVE",
    "QUARANTINED",
    "McpExecutor",
    "McpPool",
    "McpServerInfo",
    "ProgressCallback",
    "SecretRenderer",
    "SyncResult",
    "ToolPin",
    "approve_tool",
    "get_server",
    "list_servers",
    "render_result",
    "side_effect_of",
    "sync_server",
    "tool_digest",
    "tool_name_for",
    "upstream_name",
]
