"""Audit export for SIEMs: ``GET /v1/audit/events`` time filters and chains, ``corral audit export``
and ``corral audit verify --tenant``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from _live import serve
from _world import World, open_world
from typer.testing import CliRunner

from conftest import CliServer, agent_document
from corral.cli import app
from corral.runtime import engage_kill_switch, release_kill_switch
from corral.settings import Settings

runner = CliRunner()


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with open_world(settings) as opened:
        yield opened


async def test_events_filter_by_time_and_chain(world: World) -> None:
    client = world.client
    await world.apply(agent_document())
    await world.execute()
    await engage_kill_switch(
        world.platform.store,
        scope="platform",
        target="*",
        tenant_id="default",
        reason="drill",
        actor="user:ops",
    )
    stored = await world.events()
    middle = stored[len(stored) // 2]

    async def pages(**params: object) -> list[dict[str, object]]:
        items, after = [], 0
        while True:
            query = {**params, "after": after, "limit": 3}
            page = (await client.get("/v1/audit/events", params=query)).json()
            items += page["items"]
            if page["next"] is None:
                return items
            after = int(page["next"])

    everything = await pages(since="2000-01-01T00:00:00")  # no offset: UTC
    assert [e["seq"] for e in everything] == [e.seq for e in stored]
    first = everything[0]
    assert set(first) >= {
        "seq",
        "tenant_id",
        "occurred_at",
        "actor",
        "action",
        "subject",
        "outcome",
        "run_id",
        "trace_id",
        "policy_decision_id",
        "details",
        "prev_hash",
        "hash",
    }
    assert first["tenant_id"] == "default"

    since = middle.occurred_at.isoformat()
    later = await pages(since=since)
    assert [e["seq"] for e in later] == [
        e.seq for e in stored if e.occurred_at >= middle.occurred_at
    ]
    earlier = await pages(since="2000-01-01T00:00:00Z", until=since)
    assert [e["seq"] for e in earlier] == [
        e.seq for e in stored if e.occurred_at < middle.occurred_at
    ]
    future = (middle.occurred_at + timedelta(days=1)).isoformat()
    assert await pages(since=future) == []

    platform = await pages(tenant="*")
    assert [(e["tenant_id"], e["action"]) for e in platform] == [("*", "kill_switch.engaged")]
    foreign = await client.get("/v1/audit/events", params={"tenant": "acme"})
    # A platform admin may read any tenant's chain; this one does not exist.
    assert (foreign.status_code, foreign.json()["code"]) == (404, "tenant_not_found")
    await release_kill_switch(
        world.platform.store, scope="platform", target="*", tenant_id="default", actor="user:ops"
    )


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    return serve(tmp_path, cli_server)


def test_cli_export_streams_every_page_as_json_lines(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "a.yaml").write_text(json.dumps(agent_document()))
    assert runner.invoke(app, ["apply", "-f", str(agents)]).exit_code == 0
    shown = runner.invoke(app, ["audit", "events", "--json", "--limit", "1000"]).output
    expected = [json.loads(line) for line in shown.splitlines()]
    assert len(expected) >= 4  # the builtin tools and the agent

    monkeypatch.setattr("corral.cli.audit._EXPORT_PAGE", 3)  # several pages
    result = runner.invoke(app, ["audit", "export", "--since", "2000-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in result.output.splitlines()]
    assert exported == expected
    assert all(e["hash"] and e["prev_hash"] for e in exported)

    until = runner.invoke(
        app,
        ["audit", "export", "--since", "2000-01-01", "--until", "2000-01-02", "--format", "jsonl"],
    )
    assert (until.exit_code, until.output) == (0, "")
    bad = runner.invoke(app, ["audit", "export", "--since", "yesterday"])
    assert bad.exit_code == 2
    assert "--since 'yesterday' is not an ISO 8601 time" in bad.output


def test_cli_verify_takes_a_tenant(server: str) -> None:
    mine = runner.invoke(app, ["audit", "verify"])
    assert mine.exit_code == 0 and "audit chain of tenant 'default' verifies" in mine.output
    platform = runner.invoke(app, ["audit", "verify", "--tenant", "*"])
    assert platform.exit_code == 0
    assert "audit chain of tenant '*' verifies: 0 events" in platform.output
    foreign = runner.invoke(app, ["audit", "verify", "--tenant", "acme"])
    assert foreign.exit_code == 1  # the local admin is a platform admin: any existing tenant
    assert "Tenant 'acme' does not exist" in foreign.output
