"""Cost budgets: reserved before each model call, settled in the checkpoint, never overspent."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Connection, func, select, update

from conftest import agent_document, register
from corral.costs import (
    BudgetLimits,
    BudgetReservationRow,
    Budgets,
    ModelCall,
    ModelCallRow,
    Reservation,
    estimate_cost,
    estimate_input_tokens,
    record_model_call,
)
from corral.errors import BudgetExceeded
from corral.gateway.models import Message, ModelRequest, Price, ToolCall, Usage
from corral.platform import Platform
from corral.runtime import create_run, get_run
from corral.runtime._persist import claim
from corral.runtime._tables import RunRow
from corral.settings import ModelPrice, Settings
from corral.store import SYSTEM, Base, new_id, utcnow
from corral.tenancy import QuotaRow
from corral.testing import ScriptedModel

PRICE = ModelPrice(input_usd_per_mtok=Decimal(10), output_usd_per_mtok=Decimal(40))
"""The scripted model's price in these tests: dear, so that a few calls cost cents."""


@pytest.fixture
def priced(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "quotas": settings.quotas.model_copy(
                update={"model_prices": {"scripted/test": PRICE}, "cache_seconds": 0.0}
            )
        }
    )


async def _platform(settings: Settings, model: ScriptedModel, **spec: Any) -> Platform:
    platform = Platform(settings, providers={"scripted": model})
    await platform.start()
    await register(
        platform,
        agent_document(model={"default": "scripted/test", "max_output_tokens": 50}, **spec),
    )
    return platform


async def _run(platform: Platform, workspace: Path, agent: str = "repo-analyst") -> RunRow:
    async with platform.store.transaction("default") as session:
        created = await create_run(
            session,
            tenant_id="default",
            agent_name=agent,
            task="What is in this repository?",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    async with platform.store.transaction("default") as session:
        return await get_run(session, created.id, tenant_id="default")


async def _ledger(platform: Platform, tenant_id: str = "default") -> list[ModelCallRow]:
    async with platform.store.read(tenant_id) as session:
        rows = await session.scalars(
            select(ModelCallRow).where(ModelCallRow.tenant_id == tenant_id)
        )
        return list(rows)


async def _reservations(platform: Platform, tenant_id: str = "default") -> int:
    async with platform.store.read(tenant_id) as session:
        return int(
            await session.scalar(
                select(func.count()).where(BudgetReservationRow.tenant_id == tenant_id)
            )
            or 0
        )


def _list_forever(request: ModelRequest) -> ToolCall:
    # A new query each step: the same call repeated would end the run LOOP_DETECTED.
    return ScriptedModel.call("fs.search_text", query=f"needle-{len(request.messages)}")


async def test_a_run_ends_budget_exceeded_before_the_call_that_would_exceed_it(
    priced: Settings, workspace: Path
) -> None:
    model = ScriptedModel(_list_forever)
    platform = await _platform(priced, model, limits={"max_cost_usd": "0.03", "max_iterations": 50})
    try:
        run = await _run(platform, workspace)
        calls = await _ledger(platform)
    finally:
        await platform.close()

    assert run.status == "BUDGET_EXCEEDED", run.error
    assert run.terminal_reason == "max_cost_usd"
    assert "'max_cost_usd'" in run.error and "of 0.03 USD" in run.error
    # Every call made is in the ledger, priced at the override; the refused one was not made.
    assert len(calls) == len(model.requests) >= 2
    assert all(c.provider == "scripted" and c.model == "test" for c in calls)
    for call in calls:
        expected = (call.input_tokens * 10 + call.output_tokens * 40) / Decimal(10**6)
        assert call.cost_usd == expected
        assert call.agent == "repo-analyst" and call.run_id == run.id
    assert [c.step for c in sorted(calls, key=lambda c: c.step or 0)] == list(range(len(calls)))
    assert run.cost_usd == sum(c.cost_usd or 0 for c in calls)
    assert run.cost_usd <= Decimal("0.03")
    # The refused call would have taken the run over its budget at its estimate.
    figures = re.search(r"([\d.]+) USD of 0.03 USD .* up to ([\d.]+) USD", run.error)
    assert figures is not None, run.error
    spent, estimate = (Decimal(figure) for figure in figures.groups())
    assert spent == run.cost_usd
    assert spent + estimate > Decimal("0.03")


async def test_the_agent_day_budget_counts_every_run_of_the_agent_today(
    priced: Settings, workspace: Path
) -> None:
    model = ScriptedModel(lambda _r: ScriptedModel.answer("done"))
    platform = await _platform(priced, model, limits={"max_cost_usd_per_day": "0.1"})
    await register(platform, agent_document("other-agent"))
    try:
        first = await _run(platform, workspace)
        spent = first.cost_usd
        assert first.status == "SUCCEEDED" and spent > 0
        # Earlier today the agent spent nearly all the rest (another run, another worker).
        await record_model_call(
            platform.store,
            ModelCall(
                tenant_id="default",
                alias="scripted/test",
                deployment="scripted/test",
                provider="scripted",
                model="test",
                usage=Usage(input_tokens=1000),
                cost_usd=Decimal("0.1") - spent - Decimal("0.001"),
                agent="repo-analyst",
            ),
        )
        second = await _run(platform, workspace)
        other = await _run(platform, workspace, "other-agent")
        reservations = await _reservations(platform)
    finally:
        await platform.close()

    assert second.status == "BUDGET_EXCEEDED"
    assert second.terminal_reason == "max_cost_usd_per_day"
    assert "'max_cost_usd_per_day'" in second.error and "of 0.1 USD" in second.error
    assert other.status == "SUCCEEDED"  # another agent's day is its own
    assert reservations == 0


async def test_the_tenant_day_quota_counts_calls_in_flight(
    priced: Settings, workspace: Path
) -> None:
    model = ScriptedModel(lambda _r: ScriptedModel.answer("done"))
    platform = await _platform(priced, model)
    try:
        async with platform.store.transaction("default") as session:
            session.add(
                QuotaRow(
                    id=new_id("quota"),
                    tenant_id="default",
                    name="cost_usd_per_day",
                    limit=Decimal("0.05"),
                    updated_by="user:test",
                )
            )
        first = await _run(platform, workspace)
        assert first.status == "SUCCEEDED"
        # A call of another agent is in flight: its reservation counts against the tenant.
        held = await Budgets(platform.store).reserve(
            tenant_id="default",
            amount_usd=Decimal("0.05") - first.cost_usd,
            limits=BudgetLimits(tenant_day_usd=Decimal("0.05")),
            holder="user:inbound",
            agent="byo-agent",
        )
        second = await _run(platform, workspace)
        await Budgets(platform.store).settle(held, None)
        third = await _run(platform, workspace)
    finally:
        await platform.close()

    assert second.status == "BUDGET_EXCEEDED"
    assert second.terminal_reason == "quota:cost_usd_per_day"
    assert "corral quotas set cost_usd_per_day" in second.error
    assert third.status == "SUCCEEDED"


async def test_a_dead_workers_reservation_is_released_when_its_run_is_reclaimed(
    priced: Settings, workspace: Path
) -> None:
    model = ScriptedModel(lambda _r: ScriptedModel.answer("done"))
    platform = await _platform(priced, model, limits={"max_cost_usd_per_day": "1"})
    try:
        async with platform.store.transaction("default") as session:
            run = await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task="t",
                requested_by="user:test",
                workspace=str(workspace),
                workspaces=platform.workspaces,
            )
        now = utcnow()
        # The dead worker had leased the run and reserved its call's cost.
        async with platform.store.transaction("default") as session:
            await session.execute(
                update(RunRow)
                .where(RunRow.id == run.id)
                .values(
                    status="RUNNING",
                    lease_owner="dead",
                    lease_epoch=1,
                    lease_expires_at=now - timedelta(seconds=1),
                )
            )
        await Budgets(platform.store).reserve(
            tenant_id="default",
            amount_usd=Decimal("0.9"),
            limits=BudgetLimits(agent_day_usd=Decimal(1)),
            holder="worker:dead",
            run_id=run.id,
            agent="repo-analyst",
        )
        assert await _reservations(platform) == 1
        claimed = await platform.store.run_sync(
            functools.partial(
                claim,
                worker_id="alive",
                now=now,
                lease=timedelta(seconds=30),
                dialect=platform.store.engine.dialect.name,
            ),
            SYSTEM,
        )
        assert [c.run_id for c in claimed] == [run.id]
        assert await _reservations(platform) == 0
    finally:
        await platform.close()


def test_the_estimate_is_an_upper_bound_of_the_scripted_usage() -> None:
    request = ModelRequest(
        model="test",
        messages=[Message("system", "Be brief. " * 40), Message("user", "héllo wörld " * 30)],
        max_output_tokens=10,
    )
    counted = ScriptedModel(["x"])
    response = asyncio.run(counted.complete(request))

    assert estimate_input_tokens(request) >= response.usage.input_tokens
    assert estimate_cost(request, Price(Decimal(1), Decimal(2))) == (
        estimate_input_tokens(request) * 1 + 10 * 2
    ) / Decimal(10**6)


@st.composite
def _calls(draw: st.DrawFn) -> tuple[Decimal, list[tuple[Decimal, Decimal]]]:
    """A tenant budget and 20 calls: (estimate, actual cost <= estimate), in cents."""
    budget = Decimal(draw(st.integers(1, 400))) / 100
    calls = []
    for _ in range(20):
        estimate = draw(st.integers(1, 60))
        actual = draw(st.integers(0, estimate))
        calls.append((Decimal(estimate) / 100, Decimal(actual) / 100))
    return budget, calls


async def test_concurrent_calls_sharing_a_tenant_budget_never_overspend(
    make_platform: Any,
) -> None:
    """20 concurrent callers reserve, call and settle: the day's spend stays within budget.

    Estimates are pessimistic (each call costs at most its estimate), as the loop's are; with
    that, no interleaving lets the settled total exceed the budget.
    """
    platform = await make_platform()
    budgets = Budgets(platform.store)
    loop = asyncio.get_running_loop()

    async def example(budget: Decimal, calls: list[tuple[Decimal, Decimal]]) -> None:
        tenant = f"t{uuid.uuid4().hex[:10]}"
        limits = BudgetLimits(tenant_day_usd=budget)

        async def caller(index: int, estimate: Decimal, actual: Decimal) -> bool:
            try:
                held: Reservation = await budgets.reserve(
                    tenant_id=tenant,
                    amount_usd=estimate,
                    limits=limits,
                    holder=f"caller:{index}",
                    agent=f"agent-{index % 3}",
                )
            except BudgetExceeded as refused:
                assert refused.limit == "quota:cost_usd_per_day"
                return False
            await asyncio.sleep(0)  # the model call: others reserve meanwhile
            await budgets.settle(
                held,
                ModelCall(
                    tenant_id=tenant,
                    alias="scripted/test",
                    deployment="scripted/test",
                    provider="scripted",
                    model="test",
                    usage=Usage(),
                    cost_usd=actual,
                    agent=held.agent,
                ),
            )
            return True

        made = await asyncio.gather(*(caller(i, e, a) for i, (e, a) in enumerate(calls)))
        async with platform.store.read(tenant) as session:
            spent = await session.scalar(
                select(func.coalesce(func.sum(ModelCallRow.cost_usd), 0)).where(
                    ModelCallRow.tenant_id == tenant
                )
            )
            held_left = await session.scalar(
                select(func.count()).where(BudgetReservationRow.tenant_id == tenant)
            )
        assert Decimal(spent) <= budget
        assert held_left == 0
        # The first call to reserve always fits when its estimate does.
        if min(e for e, _ in calls) <= budget:
            assert any(made)

    @hsettings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=_calls())
    def never_overspends(case: tuple[Decimal, list[tuple[Decimal, Decimal]]]) -> None:
        budget, calls = case
        asyncio.run_coroutine_threadsafe(example(budget, calls), loop).result(timeout=120)

    await asyncio.to_thread(never_overspends)


class _NoUsage:
    """A provider whose replies carry no usage block (as a broken upstream's might)."""

    name = "scripted"

    def __init__(self) -> None:
        self.inner = ScriptedModel(lambda _r: ScriptedModel.answer("done"))

    async def complete(self, request: ModelRequest) -> Any:
        response = await self.inner.complete(request)
        return dataclasses.replace(response, usage=Usage(), usage_missing=True)


async def test_a_call_without_usage_is_billed_at_its_reservation_and_flagged(
    priced: Settings, workspace: Path
) -> None:
    platform = Platform(priced, providers={"scripted": _NoUsage()})
    await platform.start()
    await register(
        platform,
        agent_document(
            model={"default": "scripted/test", "max_output_tokens": 50},
            limits={"max_cost_usd_per_day": "5"},
        ),
    )
    try:
        run = await _run(platform, workspace)
        (call,) = await _ledger(platform)
        held = await _reservations(platform)
    finally:
        await platform.close()

    assert run.status == "SUCCEEDED"
    assert call.usage_missing and call.input_tokens == 0
    # The estimate: the prompt's bytes / 3 at $10/Mtok plus 50 output tokens at $40/Mtok.
    assert call.cost_usd is not None and call.cost_usd > 50 * Decimal(40) / 10**6
    assert run.cost_usd == call.cost_usd
    assert held == 0


async def test_the_ledger_tables_match_their_migration(make_platform: Any) -> None:
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        tables = ("model_calls", "budget_reservations", "runs")
        return [diff for diff in found if any(f"'{table}'" in diff for table in tables)]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_twenty_concurrent_runs_sharing_a_tenant_budget_stay_within_it(
    priced: Settings, workspace: Path
) -> None:
    model = ScriptedModel(_list_forever, delay_seconds=0.005)
    platform = await _platform(priced, model, limits={"max_iterations": 8})
    limit = Decimal("0.02")
    try:
        async with platform.store.transaction("default") as session:
            session.add(
                QuotaRow(
                    id=new_id("quota"),
                    tenant_id="default",
                    name="cost_usd_per_day",
                    limit=limit,
                    updated_by="user:test",
                )
            )
        ids = []
        async with platform.store.transaction("default") as session:
            for _ in range(20):
                created = await create_run(
                    session,
                    tenant_id="default",
                    agent_name="repo-analyst",
                    task="What is in this repository?",
                    requested_by="user:test",
                    workspace=str(workspace),
                    workspaces=platform.workspaces,
                )
                ids.append(created.id)
        await platform.worker.run_until_idle()
        calls = await _ledger(platform)
        async with platform.store.read("default") as session:
            runs = [await get_run(session, run_id, tenant_id="default") for run_id in ids]
        held = await _reservations(platform)
    finally:
        await platform.close()

    spent = sum((c.cost_usd or Decimal(0) for c in calls), Decimal(0))
    assert spent <= limit
    assert held == 0
    assert {r.status for r in runs} == {"BUDGET_EXCEEDED"}
    assert {r.terminal_reason for r in runs} == {"quota:cost_usd_per_day"}
    assert sum(r.cost_usd for r in runs) == spent
    assert len(calls) == len(model.requests) > 0
