"""Tools and MCP servers: the catalog with side effects, pins, and re-approving a quarantine."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

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
from corral.registry import list_tools

__all__ = ["approve_tool_digest", "tools"]


@router.get("/tools")
async def tools(request: Request) -> Response:
    """Registered tools and MCP servers with their pins (permission ``tools.read``)."""
    from corral.gateway.mcp import list_servers  # with the MCP client SDK: imported on first use

    session = await session_of(request)
    require(session, "tools.read")
    tenant_id = session.principal.tenant_id
    async with platform_of(request).store.read(tenant_id) as db:
        rows = await list_tools(db, tenant_id=tenant_id, limit=500)
        servers = await list_servers(db, tenant_id=tenant_id)
    catalog = [
        {
            "name": tool.name,
            "type": tool.type,
            "side_effect": tool.side_effect,
            "version": tool.latest_version,
            "digest": version.digest,
            "description": version.document["spec"]["description"],
        }
        for tool, version in rows
    ]
    context = {
        "title": "Tools",
        "tools": catalog,
        "servers": servers,
        "quarantined": [pin for s in servers for pin in s.tools if pin.status == "QUARANTINED"],
        "can_approve": session.principal.can("tools.approve"),
    }
    return render(request, "tools.html", context)


@router.post("/tools/{name}/approve")
async def approve_tool_digest(request: Request, name: str) -> Response:
    """Approve a quarantined tool's digest as ``POST /v1/tools/{name}/approve`` does."""
    from corral.gateway.mcp import approve_tool  # with the MCP client SDK: imported on first use

    session = await session_of(request)
    require(session, "tools.approve")
    platform = platform_of(request)
    await approve_tool(
        platform.store,
        name,
        (await form_of(request)).get("digest", ""),
        tenant_id=session.principal.tenant_id,
        actor=session.principal.id,
        pool=platform.mcp,
    )
    return redirect(request, f"{PORTAL_PATH}/tools")
