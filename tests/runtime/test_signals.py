"""The signals read before a read-only tool call (``corral.runtime._persist.read_signals``).

One statement answers the cancel flag, the lease and whether a kill switch applies; the
switch's details are read only when one does. The answers are those of the two reads it
replaced: the flag, the oldest applicable switch, ``None`` for a lost lease.
"""

from __future__ import annotations

import functools

from conftest import PlatformFactory, agent_document, register
from corral.platform import Platform
from corral.runtime import cancel_run, create_run, engage_kill_switch, release_kill_switch
from corral.runtime._persist import KillSwitch, Lease, Signals, read_signals
from corral.runtime._worker import Worker
from corral.testing import ScriptedModel


async def _running(platform: Platform, agent: str) -> Lease:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session, tenant_id="default", agent_name=agent, task="t", requested_by="user:test"
        )
    worker = Worker(platform.store, platform.executor, worker_id="w1")
    (claimed,) = await worker._claim(1)
    assert claimed.run_id == run.id
    return Lease(run.id, "w1", claimed.lease_epoch)


async def _read(platform: Platform, lease: Lease, agent: str) -> Signals | None:
    return await platform.store.run_sync(
        functools.partial(read_signals, lease=lease, tenant_id="default", agent_name=agent),
        "default",
    )


async def test_read_signals_answers_cancel_kill_switch_and_lost_lease(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform(scripted=ScriptedModel([]))
    await register(platform, agent_document(name="a1"), agent_document(name="a2"))
    lease = await _running(platform, "a1")
    assert await _read(platform, lease, "a1") == Signals(False)

    # A switch on another agent does not apply; one on this agent does, then the oldest.
    await engage_kill_switch(
        platform.store,
        scope="agent",
        target="a2",
        tenant_id="default",
        reason="other",
        actor="user:ops",
    )
    assert await _read(platform, lease, "a1") == Signals(False)
    await engage_kill_switch(
        platform.store,
        scope="agent",
        target="a1",
        tenant_id="default",
        reason="mine",
        actor="user:ops",
    )
    await engage_kill_switch(
        platform.store,
        scope="tenant",
        target="default",
        tenant_id="default",
        reason="later",
        actor="user:ops",
    )
    assert await _read(platform, lease, "a1") == Signals(
        False, KillSwitch("agent", "a1", "user:ops", "mine")
    )
    await release_kill_switch(
        platform.store, scope="agent", target="a1", tenant_id="default", actor="user:ops"
    )
    assert await _read(platform, lease, "a1") == Signals(
        False, KillSwitch("tenant", "default", "user:ops", "later")
    )
    await release_kill_switch(
        platform.store, scope="tenant", target="default", tenant_id="default", actor="user:ops"
    )

    await cancel_run(platform.store, lease.run_id, tenant_id="default", actor="user:test")
    assert await _read(platform, lease, "a1") == Signals(True)
    stale = Lease(lease.run_id, lease.worker_id, lease.epoch - 1)
    assert await _read(platform, stale, "a1") is None
    assert await _read(platform, Lease(lease.run_id, "w2", lease.epoch), "a1") is None
