"""Routes: ``/v1/mcp-servers`` (registered upstream MCP servers, sync) and tool approval.

McpServer documents are applied with ``POST /v1/apply`` like every contract. ``sync`` lists the
upstream's tools and records them as pinned ``mcp`` tool versions; a changed tool is
quarantined until ``POST /v1/tools/{name}/approve`` approves its new digest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["mcp"])


class ToolPinOut(BaseModel):
    """An imported tool's pin."""

    name: str = Field(description="Corral's tool name, `<server>.<tool>`.")
    server: str
    upstream_name: str = Field(description="The tool's name on the upstream server.")
    digest: str = Field(description="`sha256:<hex>` of the tool as the last sync saw it.")
    approved_digest: str | None
    status: str = Field(description="`ACTIVE`, or `QUARANTINED` until its digest is approved.")
    approved_by: str | None
    approved_at: datetime | None


class McpServerOut(BaseModel):
    """A registered MCP server and the tools imported from it."""

    name: str
    version: str
    transport: str
    description: str
    tools: list[ToolPinOut]
    created_at: datetime
    updated_at: datetime


class QuarantinedOut(BaseModel):
    """A quarantined tool and how to approve it."""

    name: str
    digest: str
    approve: str = Field(description="`NAME@DIGEST` for `corral tools approve`.")


class SkippedOut(BaseModel):
    """An upstream tool the sync did not import, and why."""

    tool: str
    reason: str


class SyncOut(BaseModel):
    """What a sync did; tool names are Corral's (`<server>.<tool>`)."""

    server: str
    added: list[str]
    unchanged: list[str]
    quarantined: list[QuarantinedOut]
    restored: list[str]
    skipped: list[SkippedOut]
    removed: list[str]


class ApproveIn(BaseModel):
    """The digest to approve: the one the last sync reported for the tool."""

    model_config = ConfigDict(extra="forbid")

    digest: str = Field(min_length=1, max_length=80, description="`sha256:<64 hex digits>`.")


@router.get("/mcp-servers", response_model=list[McpServerOut])
async def get_mcp_servers(
    session: ReadSessionDep, caller: Annotated[Caller, requires("tools.read")]
) -> list[McpServerOut]:
    """Registered MCP servers by name, with their imported tools and pins."""
    from corral.gateway.mcp import list_servers  # with the MCP client SDK: imported on first use

    servers = await list_servers(session, tenant_id=caller.tenant_id)
    return [
        McpServerOut(
            name=s.name,
            version=s.version,
            transport=s.transport,
            description=s.description,
            tools=[ToolPinOut(**pin.__dict__) for pin in s.tools],
            created_at=s.created_at,
            updated_at=s.updated_at,
        )
        for s in servers
    ]


@router.post("/mcp-servers/{name}/sync", response_model=SyncOut)
async def post_sync(
    name: str, platform: PlatformDep, caller: Annotated[Caller, requires("tools.write")]
) -> SyncOut:
    """List the server's tools now; record new ones, quarantine changed ones.

    A server that cannot be started or reached answers 502 naming it.
    """
    from corral.gateway.mcp import sync_server  # with the MCP client SDK: imported on first use

    result = await sync_server(
        platform.store, platform.mcp, name, tenant_id=caller.tenant_id, actor=caller.id
    )
    return SyncOut.model_validate(result.__dict__)


@router.post("/tools/{name}/approve", response_model=ToolPinOut)
async def post_approve(
    name: str,
    body: ApproveIn,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("tools.approve")],
) -> ToolPinOut:
    """Approve the digest an imported tool now has; it is offered and callable again.

    409 when the tool's current digest is another one (review the newer change first).
    """
    from corral.gateway.mcp import approve_tool  # with the MCP client SDK: imported on first use

    pin = await approve_tool(
        platform.store,
        name,
        body.digest,
        tenant_id=caller.tenant_id,
        actor=caller.id,
        pool=platform.mcp,
    )
    return ToolPinOut(**pin.__dict__)
