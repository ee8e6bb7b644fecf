"""Executing ``mcp`` tools on their upstream server, for the tool gateway.

Before a call reaches the upstream: the tool's pin must be ``ACTIVE`` at the digest of the
tool version being called, the server's ``spec.tools`` must still allow it, and the live
session's listing of the tool must have that same digest (a server that changed a tool since
the last sync is refused until a sync and an approval). The result's ``isError`` makes the call
fail as a tool error; a server that cannot be reached or dies fails it with an error naming the
server (``UpstreamFailed``).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from sqlalchemy import and_, select

from corral.contracts import McpServer, McpToolRef
from corral.errors import ToolFailed
from corral.gateway.mcp._client import McpPool, ProgressCallback
from corral.gateway.mcp._sync import ACTIVE, tool_digest
from corral.gateway.tools import ResolvedTool, ToolCallContext
from corral.registry import McpServerRow, McpServerVersionRow, McpToolPinRow
from corral.store import Store

__all__ = ["McpExecutor", "render_result"]


class McpExecutor:
    """Calls ``mcp`` tools through a pool of upstream sessions.

    Args:
        store: Where servers and pins are read.
        pool: Sessions to upstream servers.
        cache_seconds: How long a tool's pin and server document read from the store are
            used before reading them again (a sync or an approval in this process takes
            effect at once; in other processes within this delay).
    """

    def __init__(self, store: Store, pool: McpPool, *, cache_seconds: float = 1.0) -> None:
        self.store = store
        self.pool = pool
        self.cache_seconds = cache_seconds
        self._servers: dict[str, McpServer] = {}
        """Parsed server documents by version id (versions are immutable)."""
        self._cache: dict[tuple[str, str, str], tuple[float, int, _Found | None]] = {}

    async def call(
        self,
        ctx: ToolCallContext,
        tool: ResolvedTool,
        arguments: dict[str, Any],
        *,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Call ``tool`` upstream; return its output as text for the model.

        Args:
            ctx: The call's context (its tenant selects the session).
            tool: A tool version of type ``mcp``.
            arguments: Validated arguments.
            progress: Receives the upstream's progress notifications for this call.

        Raises:
            ToolFailed: the tool is quarantined, not imported, no longer allowed or changed
                upstream; the result has ``isError`` (the tool's own message).
            UpstreamFailed: the server cannot be reached, crashed during the call, timed out
                or answered with a protocol error.
        """
        ref = tool.contract.spec.mcp
        if ref is None:
            raise ToolFailed(
                f"Tool {tool.name!r} has type 'mcp' but no upstream reference; import it with "
                "`corral mcp sync SERVER`.",
                code="mcp_tool_not_imported",
            )
        server = await self._checked_server(ctx.tenant_id, tool.name, ref)
        listed = await self.pool.listed_tool(ctx.tenant_id, ref.server, server.spec, ref.tool)
        if listed is None or tool_digest(listed) != ref.digest:
            what = "no longer lists it" if listed is None else "changed it since its approval"
            raise ToolFailed(
                f"Tool {tool.name!r} is refused: MCP server {ref.server!r} {what}; run "
                f"`corral mcp sync {ref.server}` and review the change.",
                code="mcp_tool_changed",
            )
        result = await self.pool.call_tool(
            ctx.tenant_id, ref.server, server.spec, ref.tool, arguments, progress=progress
        )
        text = render_result(result)
        if result.is_error:
            raise ToolFailed(
                f"{tool.name!r} failed (MCP server {ref.server!r}): {text}", code="mcp_tool_error"
            )
        return text

    async def _checked_server(self, tenant_id: str, name: str, ref: McpToolRef) -> McpServer:
        """The tool's server document, after checking the tool's pin and the server's lists.

        Raises:
            ToolFailed: no such server, tool not imported, quarantined or no longer allowed.
        """
        found = await self._lookup(tenant_id, name, ref.server)
        if found is None:
            raise ToolFailed(
                f"Tool {name!r} comes from MCP server {ref.server!r}, which is not registered.",
                code="mcp_server_not_found",
            )
        server, pin = found
        if pin is None:
            raise ToolFailed(
                f"Tool {name!r} was not imported by `corral mcp sync {ref.server}`.",
                code="mcp_tool_not_imported",
            )
        if pin.status != ACTIVE or pin.approved_digest != ref.digest:
            raise ToolFailed(
                f"Tool {name!r} is quarantined: MCP server {ref.server!r} changed it since it "
                f"was approved. Review the change, then run "
                f"`corral tools approve {name}@{pin.digest}`.",
                code="mcp_tool_quarantined",
            )
        if not server.spec.tools.permits(ref.tool):
            raise ToolFailed(
                f"Tool {name!r} is not allowed by MCP server {ref.server!r}'s spec.tools.",
                code="mcp_tool_not_allowed",
            )
        return server

    async def _lookup(self, tenant_id: str, name: str, server: str) -> _Found | None:
        """The server's latest document and the tool's pin, from the cache or the store.

        An entry is used for ``cache_seconds`` at most, and not after a sync or an approval in
        this process (:meth:`McpPool.pins_changed`); other processes' changes are seen within
        ``cache_seconds``.
        """
        key = (tenant_id, name, server)
        now = time.monotonic()
        generation = self.pool.pins_generation(tenant_id)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now and cached[1] == generation:
            return cached[2]
        async with self.store.read(tenant_id) as session:
            row = (
                await session.execute(
                    select(McpServerVersionRow.id, McpServerVersionRow.document, McpToolPinRow)
                    .select_from(McpServerRow)
                    .join(McpServerVersionRow, McpServerVersionRow.server_id == McpServerRow.id)
                    .outerjoin(
                        McpToolPinRow,
                        and_(McpToolPinRow.tenant_id == tenant_id, McpToolPinRow.tool_name == name),
                    )
                    .where(McpServerRow.tenant_id == tenant_id, McpServerRow.name == server)
                    .where(McpServerVersionRow.version == McpServerRow.latest_version)
                )
            ).one_or_none()
        found: _Found | None = None
        if row is not None:
            version_id, document, pin = row
            contract = self._servers.get(version_id)
            if contract is None:
                contract = self._servers[version_id] = McpServer.model_validate(document)
            found = (
                contract,
                None if pin is None else _Pin(pin.status, pin.approved_digest, pin.digest),
            )
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (now + self.cache_seconds, generation, found)
        return found


@dataclass(frozen=True)
class _Pin:
    status: str
    approved_digest: str | None
    digest: str


_Found = tuple[McpServer, _Pin | None]
_CACHE_ENTRIES = 10_000


def render_result(result: types.CallToolResult) -> str:
    """A tool result as text: text blocks as they are, other blocks described in brackets.

    Structured content is rendered as JSON when the result has no text block.
    """
    parts: list[str] = []
    for block in result.content:
        parts.append(_render_block(block))
    if result.structured_content is not None and not any(
        isinstance(b, types.TextContent) for b in result.content
    ):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True))
    return "\n".join(parts)


def _render_block(block: Any) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        kind = "image" if isinstance(block, types.ImageContent) else "audio"
        size = len(base64.b64decode(block.data, validate=False))
        return f"[{kind}: {block.mime_type}, {size} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri} ({block.name})]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[resource {resource.uri}]\n{resource.text}"
        return f"[resource {resource.uri}: {resource.mime_type or 'binary'} blob]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"
