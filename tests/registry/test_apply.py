from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import agent_document
from corral.audit._tables import AuditEventRow
from corral.contracts import parse_document
from corral.errors import Conflict, NotFound
from corral.platform import Platform
from corral.registry import (
    ApplyResult,
    apply_documents,
    digest_of,
    get_agent_version,
    list_agent_versions,
)
from corral.registry._tables import AgentRow, AgentVersionRow


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


async def counts(platform: Platform) -> tuple[int, int, int]:
    """(agents, agent versions, audit events) in the store."""
    async with platform.store.transaction("default") as session:
        agents, versions, events = [
            (await session.execute(select(func.count()).select_from(table))).scalar_one()
            for table in (AgentRow, AgentVersionRow, AuditEventRow)
        ]
    return agents, versions, events


async def test_first_apply_creates_version_0_1_0(make_platform) -> None:
    platform = await make_platform()
    before = await counts(platform)
    [result] = await apply(platform, agent_document())
    assert (result.kind, result.name, result.action) == ("Agent", "repo-analyst", "created")
    assert (result.version, result.previous_version) == ("0.1.0", None)
    assert result.digest.startswith("sha256:") and len(result.digest) == 71
    assert "+  name: repo-analyst" in result.diff
    assert await counts(platform) == (before[0] + 1, before[1] + 1, before[2] + 1)
    async with platform.store.transaction("default") as session:
        event = (
            (await session.execute(select(AuditEventRow).order_by(AuditEventRow.seq.desc())))
            .scalars()
            .first()
        )
    assert (event.action, event.subject, event.actor) == (
        "agent.created",
        "agent:repo-analyst@0.1.0",
        "user:test",
    )
    assert event.details["digest"] == result.digest


async def test_applying_the_same_document_twice_is_a_no_op(make_platform) -> None:
    platform = await make_platform()
    [first] = await apply(platform, agent_document())
    after_first = await counts(platform)
    [second] = await apply(platform, agent_document())
    assert second.action == "unchanged"
    assert (second.version, second.previous_version) == ("0.1.0", "0.1.0")
    assert second.digest == first.digest
    assert second.diff == ""
    assert await counts(platform) == after_first


async def test_changed_spec_bumps_the_patch_and_keeps_the_old_version(make_platform) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    [result] = await apply(platform, agent_document(instructions="Be brief."))
    assert (result.action, result.version, result.previous_version) == (
        "updated",
        "0.1.1",
        "0.1.0",
    )
    [third] = await apply(platform, agent_document(instructions="Be briefer."))
    assert third.version == "0.1.2"
    async with platform.store.transaction("default") as session:
        versions = await list_agent_versions(session, "repo-analyst", tenant_id="default")
        _, old = await get_agent_version(session, "repo-analyst", "0.1.0", tenant_id="default")
        agent, latest = await get_agent_version(session, "repo-analyst", tenant_id="default")
        events = (
            await session.execute(
                select(AuditEventRow.action, AuditEventRow.subject)
                .where(AuditEventRow.subject.like("agent:repo-analyst@%"))
                .order_by(AuditEventRow.seq)
            )
        ).all()
    assert [v.version for v in versions] == ["0.1.2", "0.1.1", "0.1.0"]
    assert old.document["spec"]["instructions"] == "Answer using the fs tools."
    assert old.document["metadata"]["version"] == "0.1.0"
    assert agent.latest_version == "0.1.2"
    assert latest.document["spec"]["instructions"] == "Be briefer."
    assert [tuple(e) for e in events] == [
        ("agent.created", "agent:repo-analyst@0.1.0"),
        ("agent.version_created", "agent:repo-analyst@0.1.1"),
        ("agent.version_created", "agent:repo-analyst@0.1.2"),
    ]


async def test_unknown_version_lists_the_versions(make_platform) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    async with platform.store.transaction("default") as session:
        with pytest.raises(NotFound) as info:
            await get_agent_version(session, "repo-analyst", "9.9.9", tenant_id="default")
    assert info.value.known == ["0.1.0"]


def versioned(version: str, **spec: Any) -> dict[str, Any]:
    document = agent_document(**spec)
    document["metadata"]["version"] = version
    return document


async def test_explicit_greater_version_is_used(make_platform) -> None:
    platform = await make_platform()
    [created] = await apply(platform, versioned("1.0.0"))
    assert created.version == "1.0.0"
    [result] = await apply(platform, versioned("1.2.0", instructions="New."))
    assert (result.action, result.version, result.previous_version) == (
        "updated",
        "1.2.0",
        "1.0.0",
    )
    # Without a version, the patch of the latest is bumped.
    [bumped] = await apply(platform, agent_document(instructions="Newer."))
    assert bumped.version == "1.2.1"


@pytest.mark.parametrize("version", ["0.1.0", "0.0.9"])
async def test_explicit_version_not_greater_with_new_content_conflicts(
    make_platform, version: str
) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    before = await counts(platform)
    with pytest.raises(Conflict, match=r"not greater than the latest version 0\.1\.0"):
        await apply(platform, versioned(version, instructions="Different."))
    assert await counts(platform) == before


async def test_explicit_version_with_same_content_is_unchanged(make_platform) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    [result] = await apply(platform, versioned("0.1.0"))
    assert (result.action, result.version) == ("unchanged", "0.1.0")


async def test_dry_run_writes_nothing_and_shows_a_diff(make_platform) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    before = await counts(platform)
    [result] = await apply(platform, agent_document(risk_tier="high"), dry_run=True)
    assert (result.action, result.version, result.previous_version) == (
        "updated",
        "0.1.1",
        "0.1.0",
    )
    assert "-  risk_tier: medium" in result.diff
    assert "+  risk_tier: high" in result.diff
    assert result.diff.startswith("--- repo-analyst (current)\n+++ repo-analyst (applied)\n")
    assert await counts(platform) == before
    async with platform.store.transaction("default") as session:
        agent, latest = await get_agent_version(session, "repo-analyst", tenant_id="default")
    assert agent.latest_version == "0.1.0"
    assert latest.document["spec"]["risk_tier"] == "medium"


async def test_dry_run_of_a_new_agent_creates_nothing(make_platform) -> None:
    platform = await make_platform()
    before = await counts(platform)
    [result] = await apply(platform, agent_document(name="new-agent"), dry_run=True)
    assert (result.action, result.version) == ("created", "0.1.0")
    assert await counts(platform) == before
    async with platform.store.transaction("default") as session:
        with pytest.raises(NotFound):
            await get_agent_version(session, "new-agent", tenant_id="default")


async def test_digest_is_stable_under_default_filling(make_platform) -> None:
    terse = parse_document(agent_document())
    explicit = parse_document(
        agent_document(
            risk_tier="medium",
            status="active",
            limits={"max_iterations": 10, "max_tool_calls": 20},
            tools={"allowed": ["fs.*"], "denied": []},
            memory=[],
        )
    )
    assert digest_of(terse) == digest_of(explicit)
    # The version is not part of the content.
    assert digest_of(parse_document(versioned("3.0.0"))) == digest_of(terse)
    # Any real change is.
    assert digest_of(parse_document(agent_document(risk_tier="high"))) != digest_of(terse)

    platform = await make_platform()
    await apply(platform, agent_document())
    after_first = await counts(platform)
    [result] = await apply(platform, explicit.model_dump(mode="json", by_alias=True))
    assert result.action == "unchanged"
    assert await counts(platform) == after_first


async def test_same_object_twice_in_one_apply_conflicts_and_writes_nothing(make_platform) -> None:
    platform = await make_platform()
    before = await counts(platform)
    documents = [
        parse_document(agent_document()),
        parse_document(agent_document(name="other")),
        parse_document(agent_document(instructions="Again.")),
    ]
    with pytest.raises(Conflict, match="appears twice"):
        async with platform.store.transaction("default") as session:
            await apply_documents(session, documents, tenant_id="default", actor="user:test")
    # The two documents applied before the duplicate was found were rolled back.
    assert await counts(platform) == before
    async with platform.store.transaction("default") as session:
        names = (await session.execute(select(AgentRow.name))).scalars().all()
    assert names == []


async def test_same_name_as_agent_and_tool_is_not_a_duplicate(make_platform) -> None:
    platform = await make_platform()
    tool = {
        "apiVersion": "corral.dev/v1",
        "kind": "Tool",
        "metadata": {"name": "lookup"},
        "spec": {
            "description": "Look things up.",
            "type": "http",
            "http": {"url": "https://lookup.example.com/"},
        },
    }
    results = await apply(platform, agent_document(name="lookup"), tool)
    assert [(r.kind, r.action) for r in results] == [("Agent", "created"), ("Tool", "created")]


async def test_tenants_have_separate_registries(make_platform) -> None:
    platform = await make_platform()
    await apply(platform, agent_document())
    async with platform.store.transaction("acme") as session:
        [result] = await apply_documents(
            session, [parse_document(agent_document())], tenant_id="acme", actor="user:acme"
        )
        assert (result.action, result.version) == ("created", "0.1.0")
    async with platform.store.transaction("nobody") as session:
        with pytest.raises(NotFound):
            await get_agent_version(session, "repo-analyst", tenant_id="nobody")
