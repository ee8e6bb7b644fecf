"""Tool references of Agent documents that resolve to nothing: a typo, or a tool not yet registered.

An agent's ``spec.tools.allowed`` lists tool names and prefix wildcards (``fs.*``). An entry
that matches no registered tool is almost always a mistake (``fs.read_fle``), or a tool that
will exist only later (an MCP server not yet synced). Applying such an agent is allowed, with a
warning; ``strict`` apply refuses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Agent, McpServer, Model, Policy, Prompt, Tool
from corral.errors import ContractIssue
from corral.registry._tables import McpServerRow, ToolRow

__all__ = ["UnmatchedTool", "unmatched_tools"]


@dataclass(frozen=True)
class UnmatchedTool:
    """One ``spec.tools.allowed`` entry of an applied agent that matches no registered tool.

    Attributes:
        document: Zero-based index of the agent among the applied documents.
        agent: The agent's name.
        path: The entry's field path (``spec.tools.allowed[1]``).
        pattern: The entry (a tool name or a ``prefix*`` wildcard).
        hint: How to fix it (a close registered name, or the MCP server to sync).
    """

    document: int
    agent: str
    path: str
    pattern: str
    hint: str

    def __str__(self) -> str:
        return f"{self.path}: {self.pattern!r} matches no registered tool; {self.hint}"

    def issue(self) -> ContractIssue:
        """The refusal of a strict apply, for :class:`~corral.errors.InvalidContract`."""
        message = (
            f"agent {self.agent!r}: {self.pattern!r} matches no registered tool; {self.hint} "
            "(strict apply refuses it; apply without --strict to register the agent anyway)"
        )
        return ContractIssue("<request>", self.document, self.path, None, message)


async def unmatched_tools(
    session: AsyncSession,
    contracts: Sequence[Agent | McpServer | Model | Policy | Prompt | Tool],
    *,
    tenant_id: str,
) -> list[UnmatchedTool]:
    """Every ``spec.tools.allowed`` entry of the Agent documents that matches no tool.

    Tools are those registered in the tenant plus the Tool documents in ``contracts`` (so a
    dry run and an apply that registers an agent with its tools agree).

    Args:
        session: The apply's transaction.
        contracts: The applied documents, in request order.
        tenant_id: The tenant applying them.

    Returns:
        The unmatched entries, in document and entry order (empty when every entry matches).
    """
    agents = [(i, c) for i, c in enumerate(contracts) if isinstance(c, Agent)]
    if not agents:
        return []
    names = {c.metadata.name for c in contracts if isinstance(c, Tool)}
    names.update(
        (await session.execute(select(ToolRow.name).where(ToolRow.tenant_id == tenant_id)))
        .scalars()
        .all()
    )
    servers = {c.metadata.name for c in contracts if isinstance(c, McpServer)}
    servers.update(
        (
            await session.execute(
                select(McpServerRow.name).where(McpServerRow.tenant_id == tenant_id)
            )
        )
        .scalars()
        .all()
    )
    found: list[UnmatchedTool] = []
    for index, agent in agents:
        for position, pattern in enumerate(agent.spec.tools.allowed):
            if not any(_matches(pattern, name) for name in names):
                path = f"spec.tools.allowed[{position}]"
                hint = _hint(pattern, sorted(names), servers)
                found.append(UnmatchedTool(index, agent.metadata.name, path, pattern, hint))
    return found


def _matches(pattern: str, name: str) -> bool:
    """The rule of :meth:`corral.contracts.AgentTools.permits` (``*`` suffix: a prefix)."""
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _hint(pattern: str, names: list[str], servers: set[str]) -> str:
    server = pattern.split(".", 1)[0]
    if "." in pattern and server in servers:
        return (
            f"McpServer {server!r} has not imported it; run `corral mcp sync {server}` "
            "(MCP tools are named <server>.<tool>)"
        )
    close = difflib.get_close_matches(pattern.rstrip("*"), names, n=3, cutoff=0.75)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return "check the name (`corral get tools` lists them) or apply its Tool document too"
