"""``estimated_cost_usd`` in the ``model.call`` policy context is the call's reservation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from conftest import agent_document
from corral.settings import ModelPrice, Settings, StoreSettings
from governance._world import open_world, policy_document


@pytest.fixture
def settings(tmp_path: Path, store_settings: StoreSettings) -> Settings:
    return Settings(
        home=tmp_path / "home",
        store=store_settings,
        runtime={"poll_interval_seconds": 0.02, "lease_seconds": 30},
        workspaces={"roots": [tmp_path]},
        quotas={
            "model_prices": {
                "scripted/test": ModelPrice(
                    input_usd_per_mtok=Decimal(10), output_usd_per_mtok=Decimal(40)
                )
            }
        },
    )


def _over(limit: str) -> dict[str, object]:
    return policy_document(
        "costly-calls",
        '@id("costly-calls")\n@reason("Model calls estimated above the limit need a person.")\n'
        'forbid (principal, action == Action::"model.call", resource)\n'
        f'when {{ context.estimated_cost_usd.greaterThan(decimal("{limit}")) }};',
    )


@pytest.mark.parametrize(("limit", "status"), [("0.1", "FAILED"), ("1.0", "SUCCEEDED")])
async def test_a_policy_can_refuse_model_calls_above_an_estimated_cost(
    settings: Settings, workspace: Path, limit: str, status: str
) -> None:
    # A call's estimate here: its prompt at $10/Mtok plus 4096 output tokens (no cap) at
    # $40/Mtok, about 0.17 USD.
    async with open_world(settings) as world:
        await world.apply(agent_document(), _over(limit))
        run_id = await world.execute(workspace=str(workspace))
        run = await world.run(run_id)
        decisions = await world.decisions(run_id=run_id, action="model.call")

    assert run.status == status, run.error
    if status == "FAILED":
        assert run.terminal_reason == "model_denied"
        assert "estimated above the limit" in run.error
        assert [d.decision for d in decisions] == ["deny"]
    else:
        assert [d.decision for d in decisions] == ["allow"]
