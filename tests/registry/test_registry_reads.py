"""The registry's read functions other packages use instead of its tables."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection

from conftest import agent_document, register
from corral.errors import NotFound
from corral.registry import (
    get_agent_version,
    load_agent_version,
    load_stage_agent,
    offered_tools,
)


async def test_agent_documents_by_version_and_by_stage(make_platform) -> None:
    platform = await make_platform()
    await register(platform, agent_document(instructions="First."))
    await register(platform, agent_document(instructions="Second."))
    async with platform.store.transaction("default") as session:
        _, first = await get_agent_version(session, "repo-analyst", "0.1.0", tenant_id="default")

        def read(connection: Connection) -> tuple[object, ...]:
            return (
                load_agent_version(connection, first.id)["spec"]["instructions"],
                load_stage_agent(
                    connection, tenant_id="default", agent="repo-analyst", stage="dev"
                ),
                load_stage_agent(
                    connection, tenant_id="default", agent="repo-analyst", stage="production"
                ),
                load_stage_agent(connection, tenant_id="other", agent="repo-analyst", stage="dev"),
            )

        by_id, dev, production, other_tenant = await session.run_sync(
            lambda sync: read(sync.connection())
        )
    assert by_id == "First."
    assert isinstance(dev, dict) and dev["spec"]["instructions"] == "Second."
    assert production is None
    assert other_tenant is None


async def test_unknown_agent_version_is_not_found(make_platform) -> None:
    platform = await make_platform()
    async with platform.store.transaction("default") as session:
        with pytest.raises(NotFound, match="agv_missing"):
            await session.run_sync(
                lambda sync: load_agent_version(sync.connection(), "agv_missing")
            )


async def test_offered_tools_are_the_tenants_latest_versions(make_platform) -> None:
    platform = await make_platform()
    async with platform.store.transaction("default") as session:
        tools = await session.run_sync(lambda sync: offered_tools(sync.connection(), "default"))
        none = await session.run_sync(lambda sync: offered_tools(sync.connection(), "nobody"))
    names = [tool.name for tool in tools]
    assert "fs.read_file" in names and names == sorted(names)
    read_file = next(tool for tool in tools if tool.name == "fs.read_file")
    assert read_file.document["kind"] == "Tool"
    assert read_file.document["metadata"]["name"] == "fs.read_file"
    assert read_file.version
    assert none == []
