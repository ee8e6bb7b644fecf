"""The runtime's read functions other packages use instead of its tables."""

from __future__ import annotations

import pytest

from conftest import agent_document, register
from corral.errors import InvalidRequest
from corral.runtime import MAX_EVENTS_READ, cancel_run, create_run, read_events


async def test_read_events_pages_and_says_when_the_run_ended(make_platform) -> None:
    platform = await make_platform()
    await register(platform, agent_document())
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="What is this?",
            requested_by="user:test",
        )
    events, ended = await read_events(platform.store, run.id, tenant_id="default")
    assert [event.type for event in events] == ["run.created"]
    assert ended is False
    assert await read_events(platform.store, run.id, tenant_id="default", after=events[0].id) == (
        [],
        False,
    )
    # Another tenant sees no events and nothing to wait for.
    assert await read_events(platform.store, run.id, tenant_id="other") == ([], True)

    await cancel_run(platform.store, run.id, tenant_id="default", actor="user:test")
    events, ended = await read_events(platform.store, run.id, tenant_id="default")
    assert events[-1].type == "run.finished" and ended is True
    first, _ = await read_events(platform.store, run.id, tenant_id="default", limit=1)
    assert first == events[:1]


async def test_read_events_refuses_a_limit_out_of_range(make_platform) -> None:
    platform = await make_platform()
    for limit in (0, MAX_EVENTS_READ + 1):
        with pytest.raises(InvalidRequest, match="limit"):
            await read_events(platform.store, "run_x", tenant_id="default", limit=limit)
