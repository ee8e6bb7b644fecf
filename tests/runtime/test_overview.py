"""run_overview: the portal overview's aggregates, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from conftest import PlatformFactory, agent_document, register
from corral.runtime import create_run, run_overview
from corral.runtime._tables import RunRow


async def test_counts_failure_rate_and_latency_percentiles(make_platform: PlatformFactory) -> None:
    platform = await make_platform()
    await register(platform, agent_document())
    base = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    ids = []
    async with platform.store.transaction("default") as session:
        for _ in range(21):
            run = await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task="t",
                requested_by="user:test",
                governance=platform.governance,
            )
            ids.append(run.id)
    async with platform.store.transaction("default") as session:
        for i, run_id in enumerate(ids[:20]):
            created = base + timedelta(hours=i)  # run 14 onwards on the next UTC day
            status = "SUCCEEDED" if i < 15 else "FAILED" if i < 19 else "RUNNING"
            finished = created + timedelta(seconds=i + 1) if status != "RUNNING" else None
            await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(created_at=created, finished_at=finished, status=status)
            )
        await session.execute(  # before the window: not counted (but it is running)
            update(RunRow)
            .where(RunRow.id == ids[20])
            .values(created_at=base - timedelta(days=3), status="RUNNING")
        )
    found = await run_overview(platform.store, tenant_id="default", since=base)
    other = await run_overview(platform.store, tenant_id="acme", since=base)

    assert found.runs_by_day == {
        "2026-03-02": {"SUCCEEDED": 14},
        "2026-03-03": {"SUCCEEDED": 1, "FAILED": 4, "RUNNING": 1},
    }
    assert (found.running_now, found.finished, found.failed) == (2, 19, 4)
    assert found.failure_rate == pytest.approx(4 / 19)
    # Latencies 1..19 s: nearest rank 10 of 19 and 19 of 19.
    assert found.latency_p50_seconds == pytest.approx(10, abs=0.01)
    assert found.latency_p95_seconds == pytest.approx(19, abs=0.01)
    assert found.tool_calls_by_tool == []
    assert (other.runs_by_day, other.running_now, other.latency_p50_seconds) == ({}, 0, None)
