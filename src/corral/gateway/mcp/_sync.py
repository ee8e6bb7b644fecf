"""Importing an MCP server's tools as pinned tool versions, quarantine and approval.

``corral mcp sync SERVER`` lists the upstream's tools and records each allowed one as a
``Tool`` version of type ``mcp`` named ``<server>.<tool>``, pinned by the SHA-256 digest of
the canonical JSON of its ``name``, ``description``, ``inputSchema`` and ``annotations``. The
first sync approves what it finds (trust on first use, by the principal who ran it). A later
sync that finds a different digest records the new version but **quarantines** the tool: it
is neither offered to agents nor callable until ``corral tools approve NAME@DIGEST``. This is
the defence against a "rug pull", a server changing a tool's description or schema after it
was reviewed (https://modelcontextprotocol.io/specification/2025-11-25/server/tools,
"Security considerations").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import mcp_types as types
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import append_event, canonical_json
from corral.contracts import McpServer, Tool
from corral.errors import Conflict, InvalidContract, InvalidRequest, NotFound
from corral.gateway.mcp._client import McpPool
from corral.registry import McpServerRow, McpServerVersionRow, McpToolPinRow, apply_documents
from corral.store import Store, new_id, utcnow

__all__ = [
    "ACTIVE",
    "QUARANTINED",
    "McpServerInfo",
    "SyncResult",
    "ToolPin",
    "approve_tool",
    "get_server",
    "list_servers",
    "side_effect_of",
    "sync_server",
    "tool_digest",
    "tool_name_for",
]

ACTIVE = "ACTIVE"
"""A pinned tool whose upstream digest is the approved one: offered and callable."""
QUARANTINED = "QUARANTINED"
"""A pinned tool whose upstream changed since its approval: not offered, not callable."""

_MAX_NAME = 63
_MAX_DESCRIPTION = 4000


def tool_digest(tool: types.Tool) -> str:
    """The pin of an upstream tool: ``sha256:<hex>`` of its canonical JSON.

    The JSON (sorted keys, no spaces) holds the tool's ``name``, ``description``,
    ``inputSchema`` and ``annotations`` as sent on the wire.
    """
    annotations = (
        None
        if tool.annotations is None
        else tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    document = {
        "name": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "annotations": annotations,
    }
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def side_effect_of(
    annotations: types.ToolAnnotations | None,
) -> Literal["read", "write", "destructive"]:
    """``readOnlyHint`` -> ``read``; else ``destructiveHint`` -> ``destructive``; else ``write``.

    Hints absent count as not given: an unannotated tool is ``write`` (which policy holds for
    approval outside ``dev``), never ``read``.
    """
    if annotations is not None and annotations.read_only_hint:
        return "read"
    if annotations is not None and annotations.destructive_hint:
        return "destructive"
    return "write"


def tool_name_for(server: str, upstream: str) -> str | None:
    """Corral's name for upstream tool ``upstream`` of ``server``: ``<server>.<tool>``.

    The tool part is lower-cased, ``camelCase`` becomes ``camel_case`` and characters other
    than letters, digits, ``-``, ``_`` and ``.`` become ``_``. ``None`` when the result is
    longer than 63 characters or empty.
    """
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", upstream).lower()
    part = re.sub(r"[^a-z0-9_.-]", "_", snake).strip("_.-")
    name = f"{server}.{part}"
    return name if part and len(name) <= _MAX_NAME else None


@dataclass(frozen=True)
class ToolPin:
    """An imported tool's pin, as shown to people.

    Attributes:
        name: Corral's tool name (``git.git_status``).
        server: The McpServer it comes from.
        upstream_name: Its name on the server.
        digest: The upstream digest the last sync saw.
        approved_digest: The digest approved (by the first sync or by a person).
        status: ``ACTIVE`` or ``QUARANTINED``.
        approved_by: Who approved ``approved_digest``.
        approved_at: When (UTC).
    """

    name: str
    server: str
    upstream_name: str
    digest: str
    approved_digest: str | None
    status: str
    approved_by: str | None
    approved_at: datetime | None

    @classmethod
    def from_row(cls, row: McpToolPinRow) -> ToolPin:
        """The pin of a stored row."""
        return cls(
            row.tool_name,
            row.server_name,
            row.upstream_name,
            row.digest,
            row.approved_digest,
            row.status,
            row.approved_by,
            row.approved_at,
        )


@dataclass(frozen=True)
class SyncResult:
    """What one sync of a server did; each list holds Corral tool names, sorted.

    Attributes:
        server: The server synced.
        added: Tools seen for the first time (recorded and approved).
        unchanged: Active tools whose digest did not change.
        quarantined: Tools whose digest differs from the approved one (changed by this sync
            or still awaiting approval), with the digest to approve.
        restored: Quarantined tools whose upstream went back to the approved digest.
        skipped: Upstream tools not imported, with the reason (``spec.tools`` denies them,
            unusable name or schema).
        removed: Imported tools the server no longer lists.
    """

    server: str
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class McpServerInfo:
    """A registered server with its imported tools."""

    name: str
    version: str
    transport: str
    description: str
    tools: list[ToolPin]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class _Candidate:
    upstream: str
    contract: Tool
    digest: str


async def get_server(
    session: AsyncSession, name: str, *, tenant_id: str
) -> tuple[McpServerRow, McpServer]:
    """The registered server ``name`` and its latest document.

    Raises:
        NotFound: listing the servers that do exist.
    """
    found = (
        await session.execute(
            select(McpServerRow, McpServerVersionRow.document)
            .join(McpServerVersionRow, McpServerVersionRow.server_id == McpServerRow.id)
            .where(McpServerRow.tenant_id == tenant_id, McpServerRow.name == name)
            .where(McpServerVersionRow.version == McpServerRow.latest_version)
        )
    ).one_or_none()
    if found is None:
        known = list(
            (
                await session.execute(
                    select(McpServerRow.name)
                    .where(McpServerRow.tenant_id == tenant_id)
                    .order_by(McpServerRow.name)
                )
            ).scalars()
        )
        hint = f"known servers: {', '.join(known)}" if known else "no MCP servers are registered"
        raise NotFound(
            f"MCP server {name!r} not found ({hint}); register it with an McpServer document "
            "and `corral apply -f FILE`.",
            kind="mcp_server",
            name=name,
            known=known,
        )
    return found[0], McpServer.model_validate(found[1])


async def list_servers(session: AsyncSession, *, tenant_id: str) -> list[McpServerInfo]:
    """Every registered server (by name) with its imported tools (by name)."""
    rows = (
        await session.execute(
            select(McpServerRow, McpServerVersionRow.document)
            .join(McpServerVersionRow, McpServerVersionRow.server_id == McpServerRow.id)
            .where(McpServerRow.tenant_id == tenant_id)
            .where(McpServerVersionRow.version == McpServerRow.latest_version)
            .order_by(McpServerRow.name)
        )
    ).all()
    pins = (
        await session.execute(
            select(McpToolPinRow)
            .where(McpToolPinRow.tenant_id == tenant_id)
            .order_by(McpToolPinRow.tool_name)
        )
    ).scalars()
    by_server: dict[str, list[ToolPin]] = {}
    for pin in pins:
        by_server.setdefault(pin.server_name, []).append(ToolPin.from_row(pin))
    return [
        McpServerInfo(
            row.name,
            row.latest_version,
            row.transport,
            document["spec"]["description"],
            by_server.get(row.name, []),
            row.created_at,
            row.updated_at,
        )
        for row, document in rows
    ]


async def sync_server(
    store: Store, pool: McpPool, name: str, *, tenant_id: str, actor: str
) -> SyncResult:
    """List the upstream's tools and record, pin or quarantine each (see the module docstring).

    Args:
        store: The store.
        pool: Sessions to upstreams.
        name: The McpServer's name.
        tenant_id: Tenant of the server.
        actor: Principal running the sync (approves the tools seen for the first time).

    Raises:
        NotFound: no such server.
        UpstreamFailed: the server cannot be started or reached, or failed ``tools/list``.
    """
    async with store.read(tenant_id) as session:
        _, server = await get_server(session, name, tenant_id=tenant_id)
    listed = await pool.list_tools(tenant_id, name, server.spec)
    result = SyncResult(name)
    candidates = _candidates(server, listed, result)
    async with store.transaction(tenant_id) as session:
        pins = {
            pin.tool_name: pin
            for pin in (
                await session.execute(
                    select(McpToolPinRow).where(
                        McpToolPinRow.tenant_id == tenant_id, McpToolPinRow.server_name == name
                    )
                )
            ).scalars()
        }
        await apply_documents(
            session, [c.contract for c in candidates], tenant_id=tenant_id, actor=actor
        )
        for candidate in candidates:
            await _pin(session, pins, candidate, result, tenant_id=tenant_id, actor=actor)
        seen = {c.contract.metadata.name for c in candidates}
        result.removed.extend(sorted(set(pins) - seen))
    pool.pins_changed(tenant_id)
    for names in (result.added, result.unchanged, result.restored):
        names.sort()
    result.quarantined.sort(key=lambda q: q["name"])
    return result


def _candidates(
    server: McpServer, listed: list[types.Tool], result: SyncResult
) -> list[_Candidate]:
    """The listed tools to record, as Tool contracts; the others go to ``result.skipped``."""
    candidates: list[_Candidate] = []
    names: set[str] = set()
    for tool in listed:
        name = tool_name_for(server.metadata.name, tool.name)
        reason = None
        if not server.spec.tools.permits(tool.name):
            reason = "not allowed by the server's spec.tools"
        elif name is None:
            reason = f"cannot be named {server.metadata.name}.<tool> in 63 characters"
        elif name in names:
            reason = f"its Corral name {name!r} is taken by another tool of this server"
        if reason is None and name is not None:
            try:
                candidates.append(
                    _Candidate(tool.name, _contract(server, tool, name), tool_digest(tool))
                )
                names.add(name)
            except (InvalidContract, ValueError) as exc:
                reason = f"its definition is not a valid Corral tool: {exc}"
        if reason is not None:
            result.skipped.append({"tool": tool.name, "reason": reason})
    return candidates


def _contract(server: McpServer, tool: types.Tool, name: str) -> Tool:
    """The Tool document recording ``tool`` (``ValueError`` when it is not a valid one)."""
    description = (tool.description or "").strip() or (
        f"Tool {tool.name!r} of MCP server {server.metadata.name!r}."
    )
    annotations = tool.annotations
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "labels": {"corral.dev/mcp-server": server.metadata.name}},
            "spec": {
                "description": description[:_MAX_DESCRIPTION],
                "type": "mcp",
                "side_effect": side_effect_of(annotations),
                "idempotent": bool(annotations is not None and annotations.idempotent_hint),
                "input_schema": _object_schema(tool.input_schema),
                "timeout_seconds": server.spec.call_timeout_seconds,
                "mcp": {
                    "server": server.metadata.name,
                    "tool": tool.name,
                    "digest": tool_digest(tool),
                },
            },
        }
    )


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The upstream's input schema; an empty one (some servers send ``{}``) means an object."""
    return schema if schema else {"type": "object"}


async def _pin(
    session: AsyncSession,
    pins: dict[str, McpToolPinRow],
    candidate: _Candidate,
    result: SyncResult,
    *,
    tenant_id: str,
    actor: str,
) -> None:
    """Create or update the pin of one listed tool; audit a quarantine or a restore."""
    name, digest, now = candidate.contract.metadata.name, candidate.digest, utcnow()
    pin = pins.get(name)
    if pin is None:
        session.add(
            McpToolPinRow(
                id=new_id("pin"),
                tenant_id=tenant_id,
                tool_name=name,
                server_name=candidate.contract.spec.mcp.server
                if candidate.contract.spec.mcp
                else "",
                upstream_name=candidate.upstream,
                digest=digest,
                approved_digest=digest,
                status=ACTIVE,
                approved_by=actor,
                approved_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        result.added.append(name)
        return
    previous, was = pin.digest, pin.status
    pin.digest, pin.upstream_name, pin.updated_at = digest, candidate.upstream, now
    pin.status = ACTIVE if digest == pin.approved_digest else QUARANTINED
    if pin.status == QUARANTINED:
        result.quarantined.append({"name": name, "digest": digest, "approve": f"{name}@{digest}"})
    elif was == QUARANTINED:
        result.restored.append(name)
    else:
        result.unchanged.append(name)
    if previous == digest:
        return
    await append_event(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tool.quarantined" if pin.status == QUARANTINED else "tool.restored",
        subject=f"tool:{name}",
        outcome=pin.status.lower(),
        details={
            "server": pin.server_name,
            "upstream_tool": candidate.upstream,
            "previous_digest": previous,
            "digest": digest,
            "approved_digest": pin.approved_digest,
        },
    )


async def approve_tool(
    store: Store,
    name: str,
    digest: str,
    *,
    tenant_id: str,
    actor: str,
    pool: McpPool | None = None,
) -> ToolPin:
    """Approve the digest a quarantined tool now has: it is offered and callable again.

    Approving the digest already approved is a no-op.

    Args:
        store: The store.
        name: Corral's tool name (``git.git_commit``).
        digest: The digest to approve, ``sha256:<hex>`` (the prefix may be omitted); it must
            be the digest the last sync saw, so a person approves exactly what they reviewed.
        tenant_id: Tenant of the tool.
        actor: The approving principal.
        pool: The process's session pool, told of the change so its executors stop using
            what they cached (other processes see it within their cache delay).

    Raises:
        InvalidRequest: ``digest`` is not a SHA-256 digest.
        NotFound: no imported tool ``name``.
        Conflict: the tool's current digest is another one (a later sync saw a new change).
    """
    want = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", want):
        raise InvalidRequest(
            f"{digest!r} is not a SHA-256 digest; give the `sha256:<64 hex digits>` that "
            "`corral mcp sync` or `corral mcp list` shows."
        )
    async with store.transaction(tenant_id) as session:
        pin = await _pin_row(session, name, tenant_id=tenant_id)
        if want != pin.digest:
            raise Conflict(
                f"Tool {name!r} is at digest {pin.digest}, not {want}: the upstream changed "
                f"again; review it and run `corral tools approve {name}@{pin.digest}`."
            )
        if pin.status == ACTIVE and pin.approved_digest == want:
            return ToolPin.from_row(pin)
        previous = pin.approved_digest
        now = utcnow()
        pin.approved_digest, pin.status = want, ACTIVE
        pin.approved_by, pin.approved_at, pin.updated_at = actor, now, now
        await append_event(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="tool.approved",
            subject=f"tool:{name}",
            outcome="approved",
            details={"server": pin.server_name, "digest": want, "previous_digest": previous},
        )
        approved = ToolPin.from_row(pin)
    if pool is not None:
        pool.pins_changed(tenant_id)
    return approved


async def _pin_row(session: AsyncSession, name: str, *, tenant_id: str) -> McpToolPinRow:
    pin = (
        await session.execute(
            select(McpToolPinRow).where(
                McpToolPinRow.tenant_id == tenant_id, McpToolPinRow.tool_name == name
            )
        )
    ).scalar_one_or_none()
    if pin is None:
        raise NotFound(
            f"Tool {name!r} was not imported from an MCP server; `corral mcp list` shows the "
            "imported tools, `corral mcp sync SERVER` imports a server's.",
            kind="tool",
            name=name,
        )
    return pin
