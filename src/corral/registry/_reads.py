"""Reads of the registry for the runtime and the gateways, so none reads the registry's tables.

Each takes the caller's connection (they run inside the caller's transaction, on the hot path
too: one prepared statement each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, exists, select

from corral.errors import NotFound
from corral.registry._tables import (
    AgentRow,
    AgentVersionRow,
    McpToolPinRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)

__all__ = ["OfferedTool", "load_agent_version", "load_stage_agent", "offered_tools"]

_AGENTS = cast(Table, AgentRow.__table__)
_VERSIONS = cast(Table, AgentVersionRow.__table__)
_BINDINGS = cast(Table, StageBindingRow.__table__)
_TOOLS = cast(Table, ToolRow.__table__)
_TOOL_VERSIONS = cast(Table, ToolVersionRow.__table__)
_PINS = cast(Table, McpToolPinRow.__table__)

_VERSION_DOCUMENT = select(_VERSIONS.c.document).where(_VERSIONS.c.id == bindparam("b_version"))
_STAGE_DOCUMENT = (
    select(_VERSIONS.c.document)
    .join(_BINDINGS, _BINDINGS.c.version_id == _VERSIONS.c.id)
    .join(_AGENTS, _AGENTS.c.id == _BINDINGS.c.agent_id)
    .where(
        _AGENTS.c.tenant_id == bindparam("b_tenant"),
        _AGENTS.c.name == bindparam("b_agent"),
        _BINDINGS.c.stage == bindparam("b_stage"),
    )
)
_OFFERED_TOOLS = (
    select(_TOOLS.c.name, _TOOLS.c.latest_version, _TOOL_VERSIONS.c.document)
    .join(
        _TOOL_VERSIONS,
        and_(
            _TOOL_VERSIONS.c.tool_id == _TOOLS.c.id,
            _TOOL_VERSIONS.c.version == _TOOLS.c.latest_version,
        ),
    )
    .where(_TOOLS.c.tenant_id == bindparam("b_tenant"))
    # An MCP tool whose upstream changed since its approval is not offered (quarantine).
    .where(
        ~exists().where(
            _PINS.c.tenant_id == _TOOLS.c.tenant_id,
            _PINS.c.tool_name == _TOOLS.c.name,
            _PINS.c.status == "QUARANTINED",
        )
    )
    .order_by(_TOOLS.c.name)
)


@dataclass(frozen=True)
class OfferedTool:
    """The latest version of a tool a tenant's agents may be offered."""

    name: str
    """The tool's name (``fs.read_file``)."""
    version: str
    """Its latest version (``1.0.2``)."""
    document: dict[str, Any]
    """The stored ``Tool`` document of that version."""


def load_agent_version(connection: Connection, version_id: str) -> dict[str, Any]:
    """The stored ``Agent`` document of one agent version.

    Args:
        connection: The caller's connection (its transaction).
        version_id: The agent version's row id (a run's ``agent_version_id``).

    Raises:
        NotFound: no such agent version.
    """
    document = connection.execute(_VERSION_DOCUMENT, {"b_version": version_id}).scalar()
    if document is None:
        raise NotFound(
            f"Agent version {version_id!r} not found.", kind="agent_version", name=version_id
        )
    return dict(document)


def load_stage_agent(
    connection: Connection, *, tenant_id: str, agent: str, stage: str
) -> dict[str, Any] | None:
    """The ``Agent`` document of the version bound to ``stage``, or ``None`` if none is.

    Args:
        connection: The caller's connection (its transaction).
        tenant_id: The agent's tenant.
        agent: The agent's name.
        stage: The stage (``dev``, ``production``, ...).
    """
    document = connection.execute(
        _STAGE_DOCUMENT, {"b_tenant": tenant_id, "b_agent": agent, "b_stage": stage}
    ).scalar()
    return None if document is None else dict(document)


def offered_tools(connection: Connection, tenant_id: str) -> list[OfferedTool]:
    """The latest version of every tool of the tenant, by name; quarantined MCP tools left out.

    Args:
        connection: The caller's connection (its transaction).
        tenant_id: The tenant.
    """
    rows = connection.execute(_OFFERED_TOOLS, {"b_tenant": tenant_id})
    return [OfferedTool(row.name, row.latest_version, dict(row.document)) for row in rows]
