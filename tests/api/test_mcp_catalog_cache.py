"""The inbound ``/mcp`` catalog cache never serves a stale catalog.

The served Corral caches each principal's resolved tools between calls; every change to the
catalog, made here through a second platform (as another process would), counts from the next
call: a retired agent, a tool its new contract denies, a quarantined tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from _mcp_live import live_corral
from sqlalchemy import Table

from conftest import agent_document, register
from corral.registry._tables import McpToolPinRow
from corral.settings import Settings
from corral.store import new_id, utcnow

_PINS = cast(Table, McpToolPinRow.__table__)


def _text(result: object) -> str:
    return str(result.content[0].text)  # type: ignore[attr-defined]


async def test_a_retired_agent_or_a_revoked_tool_is_refused_on_the_next_call(
    settings: Settings, workspace: Path
) -> None:
    async with live_corral(settings, workspace, stage="dev") as live:
        await register(live.admin, agent_document())
        key = await live.agent_key("repo-analyst")
        async with live.client(key) as client:
            before = await client.call_tool("fs.search_text", {"query": "x"})
            # A new version whose contract denies the tool (applying binds dev to it).
            await register(
                live.admin,
                agent_document(tools={"allowed": ["fs.*"], "denied": ["fs.search_text"]}),
            )
            revoked = await client.call_tool("fs.search_text", {"query": "x"})
            still = await client.call_tool("fs.read_file", {"path": "README.md"})
            await register(live.admin, agent_document(status="retired"))
            retired = await client.call_tool("fs.read_file", {"path": "README.md"})
            listed = (await client.list_tools()).tools

    assert before.is_error is False, _text(before)
    assert revoked.is_error is True
    assert "not allowed to agent 'repo-analyst' by its contract" in _text(revoked)
    assert still.is_error is False, _text(still)
    assert retired.is_error is True
    assert "agent 'repo-analyst' is retired" in _text(retired)
    assert listed == []


async def test_a_tool_quarantined_or_restored_counts_from_the_next_call(
    settings: Settings, workspace: Path
) -> None:
    async with live_corral(settings, workspace) as live:
        key = await live.key("service:ide", "builder")
        async with live.client(key) as client:
            before = await client.call_tool("fs.search_text", {"query": "answer"})
            pin_id = new_id("pin")
            async with live.admin.store.transaction("default") as session:
                await session.execute(
                    _PINS.insert().values(
                        id=pin_id,
                        tenant_id="default",
                        tool_name="fs.search_text",
                        server_name="files",
                        upstream_name="search_text",
                        digest="sha256:" + "1" * 64,
                        approved_digest="sha256:" + "0" * 64,
                        status="QUARANTINED",
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
            quarantined = await client.call_tool("fs.search_text", {"query": "answer"})
            async with live.admin.store.transaction("default") as session:
                await session.execute(
                    _PINS.update()
                    .where(_PINS.c.id == pin_id)
                    .values(status="ACTIVE", approved_digest="sha256:" + "1" * 64)
                    .values(updated_at=utcnow())
                )
            restored = await client.call_tool("fs.search_text", {"query": "answer"})

    assert before.is_error is False, _text(before)
    assert quarantined.is_error is True
    assert "'fs.search_text' is quarantined" in _text(quarantined)
    assert restored.is_error is False, _text(restored)
