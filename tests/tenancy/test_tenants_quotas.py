"""Tenants (create, suspend, resume) and quotas (429 with the quota, limit, usage, reset)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from conftest import agent_document, concurrent_reloads, statements_reading
from corral.errors import QuotaExceeded
from corral.settings import ModelPrice
from corral.testing import ScriptedModel
from tenancy._world import World, live_world


async def _apply(world: World, tenant: str = "default") -> None:
    response = await world.as_(
        "POST", "/v1/apply", tenant=tenant, json={"documents": [agent_document()]}
    )
    assert response.status_code == 200, response.text


async def _run(world: World, workspace, tenant: str = "default", **kwargs):
    return await world.as_(
        "POST",
        "/v1/agents/repo-analyst/runs",
        tenant=tenant,
        json={"task": "x", "stage": "dev", "workspace": str(workspace)},
        **kwargs,
    )


async def _wait_status(world: World, run_id: str, tenant: str, statuses: set[str]) -> dict:
    for _ in range(500):
        run = (await world.as_("GET", f"/v1/runs/{run_id}", tenant=tenant)).json()
        if run["status"] in statuses:
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} stayed {run['status']}")


async def test_a_new_tenant_is_empty_has_its_builtin_tools_and_its_own_audit_chain(
    settings,
) -> None:
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await _apply(world)
        await world.tenant("team-b")
        again = await world.as_("POST", "/v1/tenants", json={"id": "team-b"})
        assert again.status_code == 409
        bad = await world.as_("POST", "/v1/tenants", json={"id": "Team B!"})
        assert bad.status_code == 422 and "[a-z0-9]" in bad.json()["message"]  # the schema's
        agents = (await world.as_("GET", "/v1/agents", tenant="team-b")).json()["items"]
        assert agents == []
        tools = [
            t["name"]
            for t in (await world.as_("GET", "/v1/tools", tenant="team-b")).json()["items"]
        ]
        assert "fs.read_file" in tools
        chain = (await world.as_("GET", "/v1/audit/verify", tenant="team-b")).json()
        assert chain["ok"] is True
        listed = [t["id"] for t in (await world.as_("GET", "/v1/tenants")).json()["items"]]
        assert listed == ["default", "team-b"]


async def test_a_suspended_tenant_gets_403_with_the_reason_and_its_runs_end(
    settings, workspace
) -> None:
    gate, in_flight = asyncio.Event(), asyncio.Event()

    async def slow(_request):
        in_flight.set()
        await gate.wait()
        return ScriptedModel.answer("late")

    async with live_world(settings, scripted=ScriptedModel(slow)) as world:
        await world.tenant("team-b")
        await _apply(world, "team-b")
        started = await _run(world, workspace, "team-b")
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        # Suspend while the model call is in flight: the worker abandons it and ends the run.
        await asyncio.wait_for(in_flight.wait(), 20)
        suspended = await world.as_(
            "POST", "/v1/tenants/team-b/suspend", json={"reason": "invoice overdue"}
        )
        assert suspended.status_code == 200, suspended.text
        refused = await world.as_("GET", "/v1/agents", tenant="team-b", principal="user:b-admin")
        assert refused.status_code == 403
        assert "invoice overdue" in refused.json()["message"]
        gate.set()
        # The default tenant's platform admin still sees the run end KILLED.
        for _ in range(500):
            async with world.platform.store.read("team-b") as session:
                from corral.runtime import get_run

                run = await get_run(session, run_id, tenant_id="team-b")
            if run.status == "KILLED":
                break
            await asyncio.sleep(0.02)
        assert run.status == "KILLED" and "invoice overdue" in (run.error or "")
        resumed = await world.as_("POST", "/v1/tenants/team-b/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "active"
        assert (
            await world.as_("GET", "/v1/agents", tenant="team-b", principal="user:b-admin")
        ).status_code == 200
        events = (
            await world.as_("GET", "/v1/audit/events", tenant="team-b", params={"limit": 500})
        ).json()["items"]
        assert {"tenant.created", "tenant.suspended", "tenant.resumed"} <= {
            e["action"] for e in events
        }


async def test_runs_per_day_quota_answers_429_with_retry_after(settings, workspace) -> None:
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await _apply(world)
        quota = await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": 2})
        assert quota.status_code == 200, quota.text
        assert quota.json()["limit"] == "2" or quota.json()["limit"] == 2
        for _ in range(2):
            assert (await _run(world, workspace)).status_code == 201
        refused = await _run(world, workspace)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["quota"] == "runs_per_day" and body["limit"] == "2" and body["current"] == "2"
        assert 0 < int(refused.headers["Retry-After"]) <= 86_401
        assert "corral quotas set runs_per_day" in body["message"]
        usage = {q["name"]: q for q in (await world.as_("GET", "/v1/quotas")).json()}
        assert float(usage["runs_per_day"]["current"]) == 2
        removed = await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": None})
        assert removed.json()["limit"] is None
        assert (await _run(world, workspace)).status_code == 201
        # The audit API lists chained events only; on PostgreSQL an event whose tenant head
        # another transaction held is chained by the background sequencer a moment later.
        limits: list[object] = []
        for _ in range(600):
            page = await world.as_("GET", "/v1/audit/events", params={"limit": 500})
            limits = [
                e["details"]["limit"] for e in page.json()["items"] if e["action"] == "quota.set"
            ]
            if len(limits) >= 2:
                break
            await asyncio.sleep(0.1)
        assert limits == ["2", None]


async def test_bad_quota_values_are_refused(settings) -> None:
    async with live_world(settings) as world:
        negative = await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": -1})
        assert negative.status_code == 422  # the schema says minimum 0
        text = await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": "1e9"})
        assert text.status_code == 422 and "decimal" in text.json()["message"]
        huge = await world.as_("PUT", "/v1/quotas/cost_usd_per_day", json={"limit": 1e300})
        assert huge.status_code == 422  # was a 500: the cost arithmetic cannot hold it
        fraction = await world.as_("PUT", "/v1/quotas/concurrent_runs", json={"limit": 1.5})
        assert fraction.status_code == 400 and "whole" in fraction.json()["message"]
        unknown = await world.as_("PUT", "/v1/quotas/bananas", json={"limit": 1})
        assert unknown.status_code == 422


async def test_model_token_quota_ends_runs_budget_exceeded(settings, workspace) -> None:
    async with live_world(
        settings, scripted=ScriptedModel([ScriptedModel.answer("first")])
    ) as world:
        await _apply(world)
        first = (await _run(world, workspace)).json()
        done = await _wait_status(world, first["id"], "default", {"SUCCEEDED", "FAILED"})
        assert done["status"] == "SUCCEEDED"
        used = done["input_tokens"] + done["output_tokens"]
        assert used > 0
        await world.as_("PUT", "/v1/quotas/model_tokens_per_day", json={"limit": used})
        second = (await _run(world, workspace)).json()
        ended = await _wait_status(
            world, second["id"], "default", {"SUCCEEDED", "BUDGET_EXCEEDED", "FAILED"}
        )
        assert ended["status"] == "BUDGET_EXCEEDED", ended
        assert ended["terminal_reason"] == "quota:model_tokens_per_day"
        assert "model_tokens_per_day" in ended["error"]


async def test_cost_quota_prices_tokens_by_model_and_ends_runs(settings, workspace) -> None:
    priced = settings.model_copy(
        update={
            "quotas": settings.quotas.model_copy(
                update={
                    "model_prices": {
                        "scripted/test": ModelPrice(
                            input_usd_per_mtok=Decimal(2), output_usd_per_mtok=Decimal(8)
                        )
                    }
                }
            )
        }
    )
    async with live_world(priced, scripted=ScriptedModel([ScriptedModel.answer("one")])) as world:
        await _apply(world)
        first = (await _run(world, workspace)).json()
        done = await _wait_status(world, first["id"], "default", {"SUCCEEDED", "FAILED"})
        assert done["status"] == "SUCCEEDED"
        cost = (done["input_tokens"] * 2 + done["output_tokens"] * 8) / 1_000_000
        usage = {q["name"]: q for q in (await world.as_("GET", "/v1/quotas")).json()}
        assert abs(float(usage["cost_usd_per_day"]["current"]) - cost) < 1e-9
        await world.as_("PUT", "/v1/quotas/cost_usd_per_day", json={"limit": str(cost)})
        second = (await _run(world, workspace)).json()
        ended = await _wait_status(
            world, second["id"], "default", {"SUCCEEDED", "BUDGET_EXCEEDED", "FAILED"}
        )
        assert ended["status"] == "BUDGET_EXCEEDED"
        assert ended["terminal_reason"] == "quota:cost_usd_per_day"


async def test_check_model_call_raises_like_check_run_start(settings, workspace) -> None:
    async with live_world(
        settings, scripted=ScriptedModel([ScriptedModel.answer("first")])
    ) as world:
        await _apply(world)
        first = (await _run(world, workspace)).json()
        done = await _wait_status(world, first["id"], "default", {"SUCCEEDED", "FAILED"})
        used = done["input_tokens"] + done["output_tokens"]
        quotas = world.platform.quotas
        await quotas.check_model_call("default")  # no model quota: nothing to refuse
        await world.as_("PUT", "/v1/quotas/model_tokens_per_day", json={"limit": used + 1})
        quotas.invalidate("default")
        await quotas.check_model_call("default")  # under the limit
        await world.as_("PUT", "/v1/quotas/model_tokens_per_day", json={"limit": used})
        quotas.invalidate("default")
        with pytest.raises(QuotaExceeded) as exceeded:
            await quotas.check_model_call("default")
        error = exceeded.value
        assert (error.quota, error.limit, error.current) == (
            "model_tokens_per_day",
            str(used),
            str(used),
        )
        assert 0 < error.retry_after_seconds <= 86_401
        assert "corral quotas set model_tokens_per_day" in error.message


async def test_concurrent_callers_share_one_reload_of_a_tenants_limits(settings) -> None:
    """Quotas.limits reloads once per tenant when its cache runs out; the others wait for it."""
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": 7})
        quotas = world.platform.quotas
        with statements_reading(world.platform, "quotas") as reads:
            first, both = await concurrent_reloads(quotas.invalidate, quotas.limits)
        assert all(limits == {"runs_per_day": Decimal(7)} for limits in first)
        assert both[:5] == [{"runs_per_day": Decimal(7)}] * 5 and both[5:] == [{}] * 5
        assert len(reads) == 3  # one per tenant and cache miss, not one per caller
