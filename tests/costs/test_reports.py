"""Cost reports: ``GET /v1/costs``, ``corral costs``, and a run's cost on ``GET /v1/runs/{id}``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import CliServer, agent_document, register
from corral.api import create_app
from corral.cli import app as cli_app
from corral.cli.costs import parse_since
from corral.costs import ModelCall, record_model_call
from corral.gateway.models import Usage
from corral.platform import Platform
from corral.settings import ModelPrice, Settings, StoreSettings
from corral.store import Store
from corral.tenancy import issue_key
from corral.testing import ScriptedModel

NOW = datetime.now(UTC)


@pytest.fixture
def settings(tmp_path: Path, store_settings: StoreSettings) -> Settings:
    """The conftest settings, with a price for the scripted model."""
    return Settings(
        home=tmp_path / "home",
        store=store_settings,
        runtime={"poll_interval_seconds": 0.02, "lease_seconds": 30},
        workspaces={"roots": [tmp_path]},
        quotas={
            "model_prices": {
                "scripted/test": ModelPrice(
                    input_usd_per_mtok=Decimal(3), output_usd_per_mtok=Decimal(15)
                )
            }
        },
    )


def _call(
    tenant: str, agent: str, model: str, cost: str | None, *, days_ago: int = 0, **kw: Any
) -> ModelCall:
    provider, _, name = model.partition("/")
    return ModelCall(
        tenant_id=tenant,
        alias=model,
        deployment=model,
        provider=provider,
        model=name,
        usage=Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=200),
        cost_usd=None if cost is None else Decimal(cost),
        agent=agent,
        created_at=NOW - timedelta(days=days_ago),
        **kw,
    )


async def _ledger(store: Store) -> None:
    for call in (
        _call("default", "analyst", "openai/gpt-4o", "0.5"),
        _call("default", "analyst", "openai/gpt-4o", "0.25", days_ago=1),
        _call("default", "writer", "anthropic/claude-3-5-haiku", "0.000000000001"),
        _call("default", "writer", "openai/my-finetune", None),
        _call("default", "analyst", "openai/gpt-4o", "9", days_ago=40),  # outside 30 days
        _call("other", "spy", "openai/gpt-4o", "7", usage_missing=True),
    ):
        await record_model_call(store, call)


async def test_costs_are_grouped_within_the_callers_tenant(api: Any) -> None:
    client = await api()
    platform: Platform = client._transport.app.state.platform  # type: ignore[attr-defined]
    await _ledger(platform.store)
    builder = await issue_key(
        platform.store,
        server_secret=platform.identity.server_secret,
        tenant_id="default",
        principal="user:builder",
        roles=["builder"],
        name="builder",
    )
    as_builder = {"Authorization": f"Bearer {builder}"}

    by_agent = (await client.get("/v1/costs", params={"by": "agent"}, headers=as_builder)).json()
    by_model = (await client.get("/v1/costs", params={"by": "model"}, headers=as_builder)).json()
    by_day = (await client.get("/v1/costs", params={"by": "day"}, headers=as_builder)).json()
    since = (NOW - timedelta(hours=1)).isoformat()
    today = (
        await client.get("/v1/costs", params={"by": "agent", "since": since}, headers=as_builder)
    ).json()
    mine = (await client.get("/v1/costs", params={"by": "tenant"}, headers=as_builder)).json()
    everyone = (await client.get("/v1/costs", params={"by": "tenant"})).json()  # platform admin
    bad = await client.get("/v1/costs", params={"by": "colour"}, headers=as_builder)

    assert [(g["key"], g["calls"], g["cost_usd"]) for g in by_agent["groups"]] == [
        ("analyst", 2, "0.75"),
        ("writer", 2, "0.000000000001"),
    ]
    assert by_agent["total_cost_usd"] == "0.750000000001"
    assert by_agent["groups"][1]["unpriced_calls"] == 1
    assert by_agent["groups"][0]["input_tokens"] == 2000
    assert by_agent["groups"][0]["cache_read_tokens"] == 400
    assert [g["key"] for g in by_model["groups"]] == [
        "openai/gpt-4o",
        "anthropic/claude-3-5-haiku",
        "openai/my-finetune",
    ]
    days = {g["key"]: g["cost_usd"] for g in by_day["groups"]}
    assert days[NOW.strftime("%Y-%m-%d")] == "0.500000000001"
    assert days[(NOW - timedelta(days=1)).strftime("%Y-%m-%d")] == "0.25"
    assert [(g["key"], g["cost_usd"]) for g in today["groups"]] == [
        ("analyst", "0.5"),
        ("writer", "0.000000000001"),
    ]
    assert [g["key"] for g in mine["groups"]] == ["default"]  # a builder sees no other tenant
    assert {g["key"]: g["cost_usd"] for g in everyone["groups"]} == {
        "other": "7",
        "default": "0.750000000001",
    }
    assert everyone["groups"][0]["usage_missing_calls"] == 1
    assert everyone["tenant"] is None
    assert bad.status_code == 422


async def test_a_runs_cost_is_on_the_run(api: Any, workspace: Path) -> None:
    client = await api(scripted=ScriptedModel([ScriptedModel.answer("done")]))
    platform: Platform = client._transport.app.state.platform  # type: ignore[attr-defined]
    await register(platform, agent_document())

    created = (
        await client.post(
            "/v1/agents/repo-analyst/runs",
            json={"task": "What?", "workspace": str(workspace), "stage": "dev"},
        )
    ).json()
    for _ in range(200):
        run = (await client.get(f"/v1/runs/{created['id']}")).json()
        if run["status"] == "SUCCEEDED":
            break
        await asyncio.sleep(0.05)

    assert run["status"] == "SUCCEEDED", run
    expected = (run["input_tokens"] * 3 + run["output_tokens"] * 15) / Decimal(10**6)
    assert Decimal(run["cost_usd"]) == expected > 0
    report = (await client.get("/v1/costs", params={"by": "model"})).json()
    assert report["groups"][0]["key"] == "scripted/test"
    assert Decimal(report["groups"][0]["cost_usd"]) == expected


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)

    assert parse_since("7d", now=now) == datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert parse_since("24h", now=now) == datetime(2026, 12, 5, 12, tzinfo=UTC)
    assert parse_since("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("last tuesday")


@pytest.fixture
def live(tmp_path: Path, cli_server: CliServer) -> Settings:
    home = tmp_path / "home"
    settings = Settings(home=home, store={"url": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"})
    cli_server(create_app(Platform(settings), local_admin=True), home=home)
    return settings


def test_corral_costs_prints_the_groups(live: Settings) -> None:
    async def fill() -> None:
        platform = Platform(live)
        try:
            await _ledger(platform.store)
        finally:
            await platform.close()

    asyncio.run(fill())
    runner = CliRunner()

    by_model = runner.invoke(cli_app, ["costs", "--by", "model", "--since", "7d"])
    by_agent = runner.invoke(cli_app, ["costs"])
    wrong = runner.invoke(cli_app, ["costs", "--since", "soon"])

    assert by_model.exit_code == 0, by_model.output
    lines = by_model.output.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "CALLS",
        "IN",
        "TOKENS",
        "OUT",
        "TOKENS",
        "CACHED",
        "COST",
        "USD",
        "UNPRICED",
    ]
    assert lines[1].split() == ["openai/gpt-4o", "2", "2000", "200", "400", "0.75"]
    assert lines[3].split() == ["openai/my-finetune", "1", "1000", "100", "200", "0", "1"]
    assert lines[-1].startswith("total: 0.750000000001 USD since ")
    assert by_agent.exit_code == 0 and "analyst" in by_agent.output
    assert wrong.exit_code == 2 and "neither a duration" in wrong.output
