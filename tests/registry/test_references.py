"""Apply warns when an agent allows a tool that matches no registered tool; strict refuses it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import agent_document
from corral.contracts import parse_document
from corral.errors import InvalidContract
from corral.platform import Platform
from corral.registry import ApplyResult, apply_documents
from corral.registry._tables import AgentRow, AgentVersionRow

LOOKUP_TOOL = {
    "apiVersion": "corral.dev/v1",
    "kind": "Tool",
    "metadata": {"name": "lookup.search"},
    "spec": {
        "description": "Look things up.",
        "type": "http",
        "http": {"url": "https://lookup.example.com/"},
    },
}

TIME_SERVER = {
    "apiVersion": "corral.dev/v1",
    "kind": "McpServer",
    "metadata": {"name": "time"},
    "spec": {"description": "Time.", "transport": "stdio", "command": "python"},
}


async def apply(
    platform: Platform, *documents: dict[str, Any], **options: Any
) -> list[ApplyResult]:
    async with platform.store.transaction("default") as session:
        return await apply_documents(
            session,
            [parse_document(d) for d in documents],
            tenant_id="default",
            actor="user:test",
            **options,
        )


async def counts(platform: Platform) -> tuple[int, int]:
    """(agents, agent versions) in the store."""
    async with platform.store.transaction("default") as session:
        agents, versions = [
            (await session.execute(select(func.count()).select_from(table))).scalar_one()
            for table in (AgentRow, AgentVersionRow)
        ]
    return agents, versions


def allowing(*patterns: str) -> dict[str, Any]:
    return agent_document(tools={"allowed": list(patterns)})


async def test_unmatched_names_and_wildcards_are_applied_with_warnings(make_platform) -> None:
    platform: Platform = await make_platform()
    [result] = await apply(platform, allowing("fs.*", "fs.read_fle", "github.*"))
    assert result.action == "created"  # a warning does not stop the apply
    assert result.warnings == (
        "spec.tools.allowed[1]: 'fs.read_fle' matches no registered tool; "
        "did you mean 'fs.read_file'?",
        "spec.tools.allowed[2]: 'github.*' matches no registered tool; check the name "
        "(`corral get tools` lists them) or apply its Tool document too",
    )
    # Unchanged, the agent still allows what does not exist: said again.
    [again] = await apply(platform, allowing("fs.*", "fs.read_fle", "github.*"))
    assert again.action == "unchanged" and len(again.warnings) == 2


async def test_tools_applied_with_the_agent_count(make_platform) -> None:
    platform = await make_platform()
    for dry_run in (True, False):
        agent, tool = await apply(platform, allowing("lookup.*"), LOOKUP_TOOL, dry_run=dry_run)
        assert (agent.warnings, tool.warnings) == ((), ())
    [later] = await apply(platform, allowing("lookup.search"))
    assert later.warnings == ()


async def test_an_unsynced_mcp_server_gets_a_sync_hint(make_platform) -> None:
    platform = await make_platform()
    agent, _ = await apply(platform, allowing("time.get_current_time"), TIME_SERVER)
    [warning] = agent.warnings
    assert "McpServer 'time' has not imported it; run `corral mcp sync time`" in warning


async def test_strict_refuses_the_whole_apply_naming_each_entry(make_platform) -> None:
    platform = await make_platform()
    before = await counts(platform)
    with pytest.raises(InvalidContract) as caught:
        await apply(
            platform,
            agent_document(name="fine"),
            allowing("fs.read_file", "fs.wrte_file", "nothing*"),
            strict=True,
        )
    assert [(i.document, i.path) for i in caught.value.issues] == [
        (1, "spec.tools.allowed[1]"),
        (1, "spec.tools.allowed[2]"),
    ]
    assert "agent 'repo-analyst': 'fs.wrte_file' matches no registered tool" in str(caught.value)
    assert "apply without --strict" in str(caught.value)
    assert await counts(platform) == before  # the valid agent was not applied either
    [result] = await apply(platform, allowing("fs.*"), strict=True)
    assert result.action == "created"
