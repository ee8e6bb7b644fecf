"""Durability of runs: leases, exactly-once side effects, pauses, cancel and kill switches.

Invariants 7, 8, 12 and 14 of DESIGN.md, on SQLite and on PostgreSQL. A worker "dies" by an
``asyncio.CancelledError`` raised at the instant under test (inside the model call, inside a
tool after its effect, or between the tool's finish record and the checkpoint); the run is then
left exactly as a killed process leaves it: ``RUNNING`` with the dead worker's lease. A worker
is "paused" (``SIGSTOP``) by holding its tool or model call on an event.

No test depends on real time passing: every worker runs on one :class:`ManualClock`, so a
lease expires only when a test expires it, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import agent_document, register
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.contracts import Tool, parse_document
from corral.errors import Conflict, KillSwitchEngaged
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools._fs import BuiltinTool
from corral.gateway.tools._gateway import current_tool_call
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import (
    LeaseLost,
    Worker,
    cancel_run,
    create_run,
    engage_kill_switch,
    get_run,
    list_steps,
    release_kill_switch,
    resolve_in_doubt,
)
from corral.runtime._tables import RunEventRow, RunRow, StepRow, ToolCallRow
from corral.settings import RuntimeSettings, Settings
from corral.testing import ManualClock, ScriptedModel

LEASE = 0.5
"""Seconds (on the tests' :class:`ManualClock`) a claimed run stays leased without renewal.

Short, so that the heartbeat ticks often (every ``LEASE / 3`` real seconds at most); the clock
does not move unless a test moves it, so no lease expires by itself."""


# --- a side-effecting tool and its world ----------------------------------------------------------


class Ledger:
    """The outside world of two ``side_effect: write`` tools, counting executions per key.

    ``ledger.append`` does not honour idempotency keys: every execution appends an entry.
    ``ledger.put`` honours them: a key seen before changes nothing.

    Attributes:
        executions: The idempotency key of every execution, in order.
        entries: The entries appended (``(key, n)``), i.e. the effects that took place.
        die_after: Ordinals (1-based) of executions after whose effect the worker dies.
    """

    def __init__(self) -> None:
        self.executions: list[str] = []
        self.entries: list[tuple[str, int]] = []
        self.die_after: set[int] = set()
        self.reads: list[str] = []
        self.pause_after: dict[int, asyncio.Event] = {}
        """Ordinals of executions after whose effect the worker "pauses" until the event is set."""
        self.paused = asyncio.Event()
        """Set when an execution pauses."""

    def count(self, key: str) -> int:
        """How many times a call with this key executed."""
        return self.executions.count(key)

    def effects(self, key: str) -> int:
        """How many times the effect of this key took place."""
        return sum(1 for k, _ in self.entries if k == key)

    def builtins(self) -> dict[str, BuiltinTool]:
        return {
            "ledger.append": BuiltinTool(_ledger_tool("ledger.append", False), self._append),
            "ledger.put": BuiltinTool(_ledger_tool("ledger.put", True), self._put),
            "ledger.read": BuiltinTool(_ledger_tool("ledger.read", True, "read"), self._read),
        }

    async def _append(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        return await self._paused(self._execute(arguments["n"], honour_key=False))

    async def _put(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        return await self._paused(self._execute(arguments["n"], honour_key=True))

    async def _read(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        self.reads.append(current_tool_call().idempotency_key)
        return f"{len(self.entries)} entries"

    async def _paused(self, output: str) -> str:
        resume = self.pause_after.get(len(self.executions))
        if resume is not None:  # the worker is stopped (SIGSTOP) after the effect took place
            self.paused.set()
            await resume.wait()
        return output

    def _execute(self, n: int, *, honour_key: bool) -> str:
        key = current_tool_call().idempotency_key
        self.executions.append(key)
        applied = not (honour_key and self.effects(key))
        if applied:
            self.entries.append((key, n))
        if len(self.executions) in self.die_after:
            raise asyncio.CancelledError  # the worker dies: the effect took place, unrecorded
        return f"entry {n} appended" if applied else f"entry {n} was already appended"


def _ledger_tool(name: str, idempotent: bool, side_effect: str = "write") -> Tool:
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "version": "1.0.0"},
            "spec": {
                "description": "Append entry n to the ledger.",
                "type": "builtin",
                "side_effect": side_effect,
                "idempotent": idempotent,
                "input_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        }
    )


# --- platforms, runs and what they stored ---------------------------------------------------------

DurablePlatform = Callable[..., Awaitable[Platform]]


@pytest.fixture
def clock() -> ManualClock:
    """The time every worker of a test sees (leases, claims, wall-clock budgets)."""
    return ManualClock()


@pytest.fixture
async def durable(settings: Settings, clock: ManualClock) -> AsyncIterator[DurablePlatform]:
    """``await durable(model, ledger)``: a started platform with the ledger tools, short leases.

    Each call is another "worker process" on the same database: its own store, executor and
    worker, all on the test's ``clock``. The agent ``repo-analyst`` may call the ledger tools.
    """
    fast = settings.model_copy(
        update={
            "runtime": RuntimeSettings(
                poll_interval_seconds=0.02, lease_seconds=LEASE, signal_poll_seconds=0.05
            )
        }
    )
    started: list[Platform] = []

    async def make(
        model: ScriptedModel, ledger: Ledger, *, lease_seconds: float = LEASE, **spec: Any
    ) -> Platform:
        custom = fast.model_copy(
            update={"runtime": fast.runtime.model_copy(update={"lease_seconds": lease_seconds})}
        )
        platform = Platform(custom, providers={"scripted": model}, builtins=ledger.builtins())
        platform.worker.clock = platform.executor.clock = clock
        await platform.start()
        started.append(platform)
        spec.setdefault("tools", {"allowed": ["ledger.*"]})
        await register(platform, agent_document(**spec))
        return platform

    yield make
    for platform in started:
        await platform.close()


async def start(
    platform: Platform, task: str = "Keep the ledger.", agent: str = "repo-analyst", **kw: Any
) -> str:
    tenant_id = kw.get("tenant_id", "default")
    async with platform.store.transaction(tenant_id) as session:
        run = await create_run(
            session,
            tenant_id=tenant_id,
            agent_name=agent,
            task=task,
            requested_by="user:test",
        )
    return run.id


async def load(
    platform: Platform, run_id: str, tenant_id: str = "default"
) -> tuple[RunRow, list[tuple[StepRow, list[ToolCallRow]]]]:
    async with platform.store.transaction(tenant_id) as session:
        run = await get_run(session, run_id, tenant_id=tenant_id)
        steps = await list_steps(session, run_id, tenant_id=tenant_id)
    return run, steps


async def calls_of(platform: Platform, run_id: str) -> list[ToolCallRow]:
    async with platform.store.transaction("default") as session:
        rows = await session.execute(
            select(ToolCallRow)
            .where(ToolCallRow.run_id == run_id)
            .order_by(ToolCallRow.step_index, ToolCallRow.call_index)
        )
        return list(rows.scalars())


async def audit(platform: Platform, run_id: str, action: str) -> list[AuditEventRow]:
    async with platform.store.transaction("default") as session:
        rows = await session.execute(
            select(AuditEventRow)
            .where(AuditEventRow.run_id == run_id, AuditEventRow.action == action)
            .order_by(AuditEventRow.seq)
        )
        return list(rows.scalars())


async def event_types(platform: Platform, run_id: str) -> list[str]:
    async with platform.store.transaction("default") as session:
        rows = await session.execute(
            select(RunEventRow.type).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id)
        )
        return list(rows.scalars())


async def cancel(platform: Platform, run_id: str, actor: str) -> str:
    return await cancel_run(platform.store, run_id, tenant_id="default", actor=actor)


DYING_LEASE = 60.0
"""Lease of a worker that is about to "die"."""


async def expire_lease(platform: Platform, run_id: str) -> None:
    """Age the dead (or paused) worker's lease on the workers' clock instead of waiting it out."""
    async with platform.store.transaction("default") as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(lease_expires_at=platform.worker.clock() - timedelta(seconds=1))
        )


async def lease_expiry(platform: Platform, run_id: str) -> Any:
    return (await load(platform, run_id))[0].lease_expires_at


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def tool_steps(tool: str, steps: int) -> Callable[[ModelRequest], ToolCall | FinalAnswer]:
    """A model that calls ``tool`` with n = 0, 1... for ``steps`` steps, then answers."""

    def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        n = done(request)
        if n < steps:
            return ToolCall(f"call_{n}", tool, {"n": n})
        return FinalAnswer(f"{n} entries")

    return decide


def done(request: ModelRequest) -> int:
    """Tool results the model has seen so far."""
    return sum(1 for m in request.messages if m.role == "tool")


def tool_texts(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "tool"]


def key(run_id: str, step: int, call: int = 0) -> str:
    return f"{run_id}:{step}:{call}"


# --- lease expiry and reclaim ---------------------------------------------------------------------


async def test_expired_lease_is_reclaimed_by_another_worker_from_the_last_checkpoint(
    durable: DurablePlatform, clock: ManualClock
) -> None:
    ledger, died = Ledger(), asyncio.Event()

    async def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        if done(request) == 2 and not died.is_set():
            died.set()
            raise asyncio.CancelledError  # the first worker dies in its model call of step 2
        return tool_steps("ledger.append", 3)(request)

    model = ScriptedModel(decide)
    first, second = await durable(model, ledger), await durable(model, ledger)
    run_id = await start(first)
    await first.worker.run_until_idle()

    dead, steps = await load(first, run_id)
    assert (dead.status, dead.step_count, dead.lease_owner) == (
        "RUNNING",
        2,
        first.worker.worker_id,
    )
    assert dead.lease_expires_at == clock() + timedelta(seconds=LEASE)
    assert len(steps) == 2
    # While the lease runs, nobody else may take the run.
    assert await second.worker.claim() is None

    # The second worker polls all along; the run is claimable once the lease expired.
    stop = asyncio.Event()
    polling = asyncio.create_task(second.worker.run(stop))
    try:
        clock.advance(seconds=LEASE)
        assert await lease_expiry(second, run_id) == clock()  # not expired yet: "<" is strict
        clock.advance(seconds=0.001)

        async def finished() -> bool:
            return (await load(second, run_id))[0].status == "SUCCEEDED"

        await until(finished)
    finally:
        stop.set()
        await polling

    run, steps = await load(second, run_id)
    assert (run.output, run.lease_owner, run.step_count) == ("3 entries", None, 4)
    assert [(s.index, s.kind) for s, _ in steps] == [
        (0, "tool_calls"),
        (1, "tool_calls"),
        (2, "tool_calls"),
        (3, "final_answer"),
    ]
    leases = await audit(second, run_id, "run.leased")
    assert [(e.actor, e.details["from_step"], e.details["lease_epoch"]) for e in leases] == [
        (f"worker:{first.worker.worker_id}", 0, 1),
        (f"worker:{second.worker.worker_id}", 2, 2),
    ]
    # Each step's effect happened once; the reclaimed run did not redo steps 0 and 1.
    assert ledger.executions == [key(run_id, 0), key(run_id, 1), key(run_id, 2)]
    assert len(model.requests) == 5
    assert model.requests[3].messages == model.requests[2].messages  # the same context rebuilt
    assert (run.iterations, run.tool_call_count) == (4, 3)


async def test_live_worker_keeps_its_lease_through_a_model_call_longer_than_the_lease(
    durable: DurablePlatform, clock: ManualClock
) -> None:
    ledger, holder = Ledger(), {}

    async def slow(request: ModelRequest) -> ToolCall | FinalAnswer:
        if done(request) == 0:
            # The call lasts three leases; the owner's heartbeat renews the lease meanwhile.
            owner, other, run_id = holder["owner"], holder["other"], holder["run_id"]
            for _ in range(6):
                clock.advance(seconds=LEASE / 2)

                async def renewed() -> bool:
                    return bool(await lease_expiry(owner, run_id) > clock())

                await until(renewed)
                assert await other.worker.claim() is None
            holder["renewals"] = 6
        return tool_steps("ledger.append", 1)(request)

    model = ScriptedModel(slow)
    owner, other = await durable(model, ledger), await durable(model, ledger)
    run_id = await start(owner)
    holder.update(owner=owner, other=other, run_id=run_id)
    stop = asyncio.Event()
    working = asyncio.create_task(owner.worker.run(stop))
    try:

        async def finished() -> bool:
            return (await load(owner, run_id))[0].status == "SUCCEEDED"

        await until(finished)
    finally:
        stop.set()
        await working
    assert holder["renewals"] == 6
    leases = await audit(owner, run_id, "run.leased")
    assert len(leases) == 1, [(e.actor, e.details) for e in leases]
    assert ledger.executions == [key(run_id, 0)]


# --- fencing: a worker whose lease was taken over writes nothing more -----------------------------


@pytest.mark.parametrize(
    ("tool", "left_as"),
    [
        # The new owner found the call STARTED and paused the run for a person.
        ("ledger.append", ("IN_DOUBT", "STARTED", None)),
        # The new owner retried it with its idempotency key and went on.
        ("ledger.put", ("SUCCEEDED", "COMPLETED", "entry 7 was already appended")),
    ],
)
async def test_worker_paused_past_its_lease_cannot_record_its_call_finished(
    durable: DurablePlatform, tool: str, left_as: tuple[str, str, str | None]
) -> None:
    ledger, resume = Ledger(), asyncio.Event()
    ledger.pause_after = {1: resume}  # the first worker stops right after the call's effect

    def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        if done(request) == 0:
            return ToolCall("call_0", tool, {"n": 7})
        return FinalAnswer("done")

    model = ScriptedModel(decide)
    paused, successor = await durable(model, ledger), await durable(model, ledger)
    run_id = await start(paused)
    assert await paused.worker.claim() == run_id
    driving = asyncio.create_task(paused.executor.execute(run_id, paused.worker.worker_id))
    try:
        await asyncio.wait_for(ledger.paused.wait(), 30)
        await expire_lease(paused, run_id)
        await successor.worker.run_until_idle()
        before, _ = await load(successor, run_id)
        [call_before] = await calls_of(successor, run_id)
    finally:
        resume.set()  # SIGCONT: the paused worker goes on with its finish write
    with pytest.raises(LeaseLost) as lost:
        await asyncio.wait_for(driving, 30)

    (run, _), [call] = await load(successor, run_id), await calls_of(successor, run_id)
    assert (run.status, call.status, call.output) == left_as
    # Exactly as the new owner left it: the late finish write changed nothing.
    assert (run.updated_at, run.lease_owner, run.lease_epoch) == (
        before.updated_at,
        before.lease_owner,
        before.lease_epoch,
    )
    assert (call.status, call.output, call.finished_at) == (
        call_before.status,
        call_before.output,
        call_before.finished_at,
    )
    assert (lost.value.run_id, lost.value.worker_id) == (run_id, paused.worker.worker_id)
    assert ledger.count(key(run_id, 0)) == (1 if tool == "ledger.append" else 2)


class EngageAfterDeciding:
    """The real governance, with a cancel or kill switch arriving just after each tool decision."""

    def __init__(self, governance: Any, engage: Callable[[], Awaitable[Any]]) -> None:
        self.governance, self.engage = governance, engage
        self.decisions: list[str] = []

    def __getattr__(self, name: str) -> Any:  # the rest (path guards...) as it is
        return getattr(self.governance, name)

    async def authorize(self, tenant_id: str, request: Any, *args: Any, **kw: Any) -> Any:
        authorization = await self.governance.authorize(tenant_id, request, *args, **kw)
        if request.action == "tool.call":
            self.decisions.append(authorization.kind)
            await self.engage()
        return authorization


@pytest.mark.parametrize("signal", ["kill", "cancel"])
async def test_signal_between_decision_and_execution_stops_a_read_only_call(
    durable: DurablePlatform, signal: str
) -> None:
    ledger, holder = Ledger(), {}
    model = ScriptedModel(lambda _r: ToolCall("call_0", "ledger.read", {"n": 0}))
    platform = await durable(model, ledger)

    async def engage() -> None:
        if signal == "cancel":
            await cancel(platform, holder["run_id"], "user:ops")
            return
        await engage_kill_switch(
            platform.store,
            scope="agent",
            target="repo-analyst",
            tenant_id="default",
            reason="incident 7",
            actor="user:ops",
        )

    governance = EngageAfterDeciding(platform.executor.governance, engage)
    platform.executor.governance = governance  # type: ignore[assignment]
    run_id = holder["run_id"] = await start(platform)
    await platform.worker.run_until_idle()

    run, [(step, calls)] = await load(platform, run_id)
    expected = ("KILLED", "kill_switch") if signal == "kill" else ("CANCELLED", "cancelled")
    assert (run.status, run.terminal_reason) == expected
    assert governance.decisions == ["allow"]
    assert ledger.reads == []  # allowed, but stopped before it ran
    assert calls == [] and step.decision["tool_calls"] == []
    assert [c["name"] for c in step.decision["skipped_tool_calls"]] == ["ledger.read"]


async def test_stale_task_of_a_worker_that_reclaimed_its_run_stops_with_lease_lost(
    durable: DurablePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's lease expired in a model call and the same worker claimed the run again.

    The first task's later writes carry the same ``lease_owner`` as the second's: the lease
    epoch alone fences them out. Before, its checkpoint inserted a step the second task had
    written already (an IntegrityError on ``UNIQUE(steps.run_id, steps.index)``) and the run
    ended FAILED.
    """
    ledger = Ledger()
    first_in, release_first = asyncio.Event(), asyncio.Event()
    second_in, release_second = asyncio.Event(), asyncio.Event()

    async def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        calls = len(model.requests)  # this request included
        if calls == 1:  # the first task, step 0: stalls past its lease
            first_in.set()
            await release_first.wait()
        if calls == 3:  # the second task, step 1
            second_in.set()
            await release_second.wait()
            return FinalAnswer("done")
        return ToolCall("call_0", "ledger.read", {"n": 0})

    model = ScriptedModel(decide)
    platform = await durable(model, ledger)
    run_id = await start(platform)
    stop = asyncio.Event()
    working = asyncio.create_task(platform.worker.run(stop))
    try:
        await asyncio.wait_for(first_in.wait(), 30)
        await expire_lease(platform, run_id)  # the worker reclaims it at its next poll
        await asyncio.wait_for(second_in.wait(), 30)
        release_first.set()

        async def stale_task_stopped() -> bool:
            return any(r.name == "corral.runtime._worker" for r in caplog.records)

        await until(stale_task_stopped, 30)
        release_second.set()

        async def ended() -> bool:
            return (await load(platform, run_id))[0].finished_at is not None

        await until(ended, 30)
    finally:
        release_first.set()
        release_second.set()
        stop.set()
        await working

    run, steps = await load(platform, run_id)
    assert (run.status, run.output, run.error) == ("SUCCEEDED", "done", None)
    assert [(s.index, s.kind) for s, _ in steps] == [(0, "tool_calls"), (1, "final_answer")]
    worker = f"worker:{platform.worker.worker_id}"
    leases = await audit(platform, run_id, "run.leased")
    assert [(e.actor, e.details["lease_epoch"]) for e in leases] == [(worker, 1), (worker, 2)]
    assert ledger.reads == [key(run_id, 0)]  # the stale task's call did not run
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    [stopped] = [r.getMessage() for r in caplog.records if r.name == "corral.runtime._worker"]
    assert f"lease 1 on run {run_id} was taken over" in stopped


# --- a started non-idempotent call found on recovery ----------------------------------------------


async def in_doubt_run(durable: DurablePlatform, ledger: Ledger) -> tuple[Platform, Any, str]:
    """A run whose worker died inside ``ledger.append`` after its effect; recovered IN_DOUBT."""
    ledger.die_after = {1}

    def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        if done(request) == 0:
            return ToolCall("call_0", "ledger.append", {"n": 7})
        return FinalAnswer(f"the model saw: {tool_texts(request)[0]}")

    model = ScriptedModel(decide)
    first = await durable(model, ledger, lease_seconds=DYING_LEASE)
    run_id = await start(first)
    await first.worker.run_until_idle()
    run, _ = await load(first, run_id)
    [call] = await calls_of(first, run_id)
    assert (run.status, run.step_count, call.status) == ("RUNNING", 0, "STARTED")
    assert run.pending_decision is not None
    await expire_lease(first, run_id)
    recovering = await durable(model, ledger)
    await recovering.worker.run_until_idle()
    return recovering, model, run_id


async def test_started_non_idempotent_call_pauses_the_run_in_doubt(
    durable: DurablePlatform,
) -> None:
    ledger = Ledger()
    platform, model, run_id = await in_doubt_run(durable, ledger)
    run, steps = await load(platform, run_id)
    k = key(run_id, 0)
    assert run.status == "IN_DOUBT"
    assert run.terminal_reason is None and run.finished_at is None
    assert k in run.pause_reason
    assert f"corral runs resolve {run_id} --as done|retry|failed" in run.pause_reason
    assert run.resume_condition == {
        "kind": "in_doubt",
        "idempotency_key": k,
        "tool": "ledger.append",
    }
    assert steps == []
    assert ledger.count(k) == 1  # not executed again
    assert len(model.requests) == 1  # the model was not asked again either
    [paused] = await audit(platform, run_id, "run.paused")
    assert (paused.outcome, paused.details["idempotency_key"]) == ("in_doubt", k)
    assert (await event_types(platform, run_id))[-1] == "run.paused"

    # A paused run holds nothing: no lease, no task, and no worker takes it.
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
    assert platform.executor.running_states() == []
    assert platform.worker._active == {}
    assert await Worker(platform.store, platform.executor, worker_id="w3").claim() is None


@pytest.mark.parametrize("resolution", ["done", "retry", "failed"])
async def test_resolving_an_in_doubt_call_resumes_the_run(
    durable: DurablePlatform, resolution: str
) -> None:
    ledger = Ledger()
    platform, model, run_id = await in_doubt_run(durable, ledger)
    k = key(run_id, 0)
    resolved = await resolve_in_doubt(
        platform.store,
        run_id,
        tenant_id="default",
        actor="user:ops",
        resolution=resolution,  # type: ignore[arg-type]
        comment="checked the ledger",
    )
    assert resolved == k
    assert (await load(platform, run_id))[0].status == "QUEUED"
    await platform.worker.run_until_idle()

    run, steps = await load(platform, run_id)
    assert (run.status, run.lease_owner, run.pause_reason) == ("SUCCEEDED", None, None)
    assert [s.kind for s, _ in steps] == ["tool_calls", "final_answer"]
    [call] = steps[0][1]
    assert call.idempotency_key == k
    seen = tool_texts(model.requests[-1])[0]
    assert len(model.requests) == 2  # step 0's decision was not asked for again
    if resolution == "done":
        assert ledger.executions == [k]
        assert call.status == "COMPLETED"
        assert "resolved as done by user:ops: checked the ledger" in call.output
        assert "the effect took place" in seen
    elif resolution == "retry":
        assert ledger.executions == [k, k]  # executed again, with the same key
        assert (call.status, call.output) == ("COMPLETED", "entry 7 appended")
        assert "entry 7 appended" in seen
    else:
        assert ledger.executions == [k]
        assert (call.status, call.error_type) == ("FAILED", "resolved_failed")
        assert "resolved as failed by user:ops: checked the ledger" in call.error
        assert "resolved as failed" in seen
    [resumed] = await audit(platform, run_id, "run.resumed")
    assert resumed.details["resolution"] == resolution
    assert resumed.details["idempotency_key"] == k
    # The recovered step's model call counts (one decision per step).
    assert (run.iterations, run.step_count, run.tool_call_count) == (2, 2, 1)
    with pytest.raises(Conflict):
        await resolve_in_doubt(
            platform.store, run_id, tenant_id="default", actor="user:ops", resolution="done"
        )


# --- an idempotent tool found STARTED -------------------------------------------------------------


async def test_started_idempotent_call_is_retried_with_the_same_key(
    durable: DurablePlatform,
) -> None:
    ledger = Ledger()
    ledger.die_after = {2}  # call 1 of the step dies after its effect
    three = [ToolCall(f"c{i}", "ledger.put", {"n": i}) for i in range(3)]
    model = ScriptedModel(lambda r: three if done(r) == 0 else FinalAnswer("ok"))
    first = await durable(model, ledger, lease_seconds=DYING_LEASE)
    run_id = await start(first)
    await first.worker.run_until_idle()
    assert [c.status for c in await calls_of(first, run_id)] == ["COMPLETED", "STARTED"]
    await expire_lease(first, run_id)
    await (await durable(model, ledger)).worker.run_until_idle()

    run, steps = await load(first, run_id)
    assert (run.status, run.output) == ("SUCCEEDED", "ok")
    k0, k1, k2 = (key(run_id, 0, i) for i in range(3))
    # The finished call is reused, the started one retried with its key, the last one run once.
    assert ledger.executions == [k0, k1, k1, k2]
    assert [ledger.effects(k) for k in (k0, k1, k2)] == [1, 1, 1]
    assert [(c.idempotency_key, c.status) for c in steps[0][1]] == [
        (k0, "COMPLETED"),
        (k1, "COMPLETED"),
        (k2, "COMPLETED"),
    ]
    assert steps[0][1][1].output == "entry 1 was already appended"
    assert await audit(first, run_id, "run.paused") == []
    assert len(model.requests) == 2


# --- exactly once across a crash between the tool's finish record and the checkpoint --------------


@pytest.mark.parametrize("tool", ["ledger.append", "ledger.put"])
async def test_call_finished_before_a_crash_is_not_run_again(
    durable: DurablePlatform, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    ledger = Ledger()
    model = ScriptedModel(tool_steps(tool, 3))
    first = await durable(model, ledger, lease_seconds=DYING_LEASE)
    original = first.executor._checkpoint
    crashes: list[int] = []

    async def die_before_step_1_checkpoint(state: Any, record: Any, *args: Any) -> None:
        if record is not None and state.step_count == 1 and not crashes:
            crashes.append(state.step_count)
            raise asyncio.CancelledError  # after record_finished_call, before the checkpoint
        await original(state, record, *args)

    monkeypatch.setattr(first.executor, "_checkpoint", die_before_step_1_checkpoint)
    run_id = await start(first)
    await first.worker.run_until_idle()

    run, steps = await load(first, run_id)
    assert (run.status, run.step_count, len(steps), crashes) == ("RUNNING", 1, 1, [1])
    assert [(c.idempotency_key, c.status) for c in await calls_of(first, run_id)] == [
        (key(run_id, 0), "COMPLETED"),
        (key(run_id, 1), "COMPLETED"),  # finished, but its step was never checkpointed
    ]
    await expire_lease(first, run_id)
    await (await durable(model, ledger)).worker.run_until_idle()

    run, steps = await load(first, run_id)
    assert (run.status, run.output) == ("SUCCEEDED", "3 entries")
    keys = [key(run_id, i) for i in range(3)]
    assert ledger.executions == keys  # every call exactly once, the later steps included
    assert ledger.entries == [(k, n) for n, k in enumerate(keys)]
    assert [[c.idempotency_key for c in calls] for _, calls in steps] == [[k] for k in keys] + [[]]
    assert [c.output for _, calls in steps for c in calls] == [
        f"entry {n} appended" for n in range(3)
    ]
    assert await audit(first, run_id, "run.paused") == []
    # Step 1's decision came from the checkpointed pending decision, not a new model call.
    assert len(model.requests) == 4
    assert (run.iterations, run.step_count, run.tool_call_count) == (4, 4, 3)
    assert run.input_tokens == sum(s.input_tokens for s, _ in steps)
    async with first.store.transaction("default") as session:
        assert (await verify_chain(session, tenant_id="default")).ok


# --- cancel ---------------------------------------------------------------------------------------


async def test_cancel_between_steps_runs_no_further_tool_call(durable: DurablePlatform) -> None:
    ledger, holder = Ledger(), {}

    async def cancel_then_call(request: ModelRequest) -> ToolCall:
        platform: Platform = holder["platform"]
        run_id = holder["run_id"]
        assert await cancel(platform, run_id, "user:test") == "RUNNING"
        return ToolCall("call_0", "ledger.append", {"n": 1})

    model = ScriptedModel(cancel_then_call)
    platform = holder["platform"] = await durable(model, ledger)
    run_id = holder["run_id"] = await start(platform)
    await platform.worker.run_until_idle()

    run, steps = await load(platform, run_id)
    assert (run.status, run.terminal_reason, run.lease_owner) == ("CANCELLED", "cancelled", None)
    assert ledger.executions == []
    [(step, calls)] = steps
    assert calls == []
    assert step.decision["tool_calls"] == []
    assert [c["name"] for c in step.decision["skipped_tool_calls"]] == ["ledger.append"]
    assert len(model.requests) == 1
    [requested] = await audit(platform, run_id, "run.cancel_requested")
    assert requested.actor == "user:test"


async def test_cancel_abandons_an_in_flight_model_call(durable: DurablePlatform) -> None:
    ledger, entered, abandoned = Ledger(), asyncio.Event(), asyncio.Event()

    async def hang(_request: ModelRequest) -> FinalAnswer:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            abandoned.set()
            raise
        return FinalAnswer("too late")

    model = ScriptedModel(hang)
    platform = await durable(model, ledger)
    run_id = await start(platform)
    working = asyncio.create_task(platform.worker.run_until_idle())
    await asyncio.wait_for(entered.wait(), 20)
    assert await cancel(platform, run_id, "user:x") == "RUNNING"
    assert await platform.worker.check_signals() == [run_id]
    await asyncio.wait_for(working, 20)  # far below the model's 30 s: the call was abandoned
    assert abandoned.is_set()

    run, steps = await load(platform, run_id)
    assert (run.status, run.terminal_reason, run.output) == ("CANCELLED", "cancelled", None)
    assert steps == []  # no step after the cancel, not even the abandoned one
    assert len(model.requests) == 1
    assert (await event_types(platform, run_id))[-1] == "run.finished"


async def test_cancel_of_a_paused_run_ends_it_at_once(durable: DurablePlatform) -> None:
    ledger = Ledger()
    platform, model, run_id = await in_doubt_run(durable, ledger)
    assert await cancel(platform, run_id, "user:x") == "CANCELLED"
    run, steps = await load(platform, run_id)
    assert (run.status, run.terminal_reason, run.error) == (
        "CANCELLED",
        "cancelled",
        "cancelled by user:x",
    )
    assert (run.pause_reason, run.lease_owner, run.finished_at is not None) == (None, None, True)
    with pytest.raises(Conflict):
        await resolve_in_doubt(
            platform.store, run_id, tenant_id="default", actor="user:x", resolution="retry"
        )
    await platform.worker.run_until_idle()
    assert (await load(platform, run_id))[0].status == "CANCELLED"
    assert ledger.executions == [key(run_id, 0)]
    assert steps == [] and len(model.requests) == 1


# --- kill switches --------------------------------------------------------------------------------

SWITCH_TARGETS = {"agent": "repo-analyst", "tenant": "default", "platform": "*"}
# Runs: R running when the switch is engaged; Q queued, same agent; U1 queued, another agent
# of the tenant; U2 queued, the same agent name in another tenant.
EXPECTED = {
    "agent": {"R": "KILLED", "Q": "KILLED", "U1": "SUCCEEDED", "U2": "SUCCEEDED"},
    "tenant": {"R": "KILLED", "Q": "KILLED", "U1": "KILLED", "U2": "SUCCEEDED"},
    "platform": {"R": "KILLED", "Q": "KILLED", "U1": "KILLED", "U2": "KILLED"},
}


async def two_tenants(durable: DurablePlatform, model: ScriptedModel, ledger: Ledger) -> Platform:
    platform = await durable(model, ledger)
    await register(platform, agent_document(name="other-agent", tools={"allowed": ["ledger.*"]}))
    await platform.register_builtin_tools("acme")
    async with platform.store.transaction("acme") as session:
        await apply_documents(
            session,
            [parse_document(agent_document(tools={"allowed": ["ledger.*"]}))],
            tenant_id="acme",
            actor="user:test",
        )
    return platform


@pytest.mark.parametrize("scope", ["agent", "tenant", "platform"])
async def test_kill_switch_stops_the_runs_it_covers(durable: DurablePlatform, scope: str) -> None:
    ledger, holder = Ledger(), {}
    target = SWITCH_TARGETS[scope]
    reason = "runaway spend"

    async def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        task = request.messages[1].content
        if task == "R" and not holder.get("engaged"):
            holder["engaged"] = await engage_kill_switch(
                holder["platform"].store,
                scope=scope,  # type: ignore[arg-type]
                target=target,
                tenant_id="default",
                reason=reason,
                actor="user:ops",
            )
            return ToolCall("call_0", "ledger.append", {"n": 1})
        return FinalAnswer(f"{task} done")

    platform = holder["platform"] = await two_tenants(durable, ScriptedModel(decide), ledger)
    runs = {
        "R": await start(platform, "R"),
        "Q": await start(platform, "Q"),
        "U1": await start(platform, "U1", agent="other-agent"),
        "U2": await start(platform, "U2", tenant_id="acme"),
    }
    tenants = {"R": "default", "Q": "default", "U1": "default", "U2": "acme"}
    # One run at a time, so Q, U1 and U2 are still queued when R's model call engages the switch.
    solo = Worker(platform.store, platform.executor, worker_id="solo", concurrency=1)
    await solo.run_until_idle()

    _info, ended_at_once = holder["engaged"]
    expected = EXPECTED[scope]
    assert ended_at_once == sum(s == "KILLED" for s in expected.values()) - 1  # all but R
    statuses = {}
    switch = f"kill switch '{scope}:{target}' engaged by user:ops: {reason}"
    for name, run_id in runs.items():
        run, steps = await load(platform, run_id, tenants[name])
        statuses[name] = run.status
        if run.status == "KILLED":
            assert (run.terminal_reason, run.error, run.lease_owner) == (
                "kill_switch",
                switch,
                None,
            )
        if name != "R" and run.status == "KILLED":
            assert steps == []  # killed while queued: never started
    assert statuses == expected
    # R was killed at its next check: its tool call did not run.
    assert ledger.executions == []
    r_steps = (await load(platform, runs["R"]))[1]
    assert [c["name"] for c in r_steps[0][0].decision["skipped_tool_calls"]] == ["ledger.append"]

    # New runs of what the switch covers are refused, naming the switch; others start.
    with pytest.raises(KillSwitchEngaged) as refused:
        await start(platform, "new")
    assert (refused.value.scope, refused.value.target, refused.value.engaged_by) == (
        scope,
        target,
        "user:ops",
    )
    assert switch in refused.value.message
    assert "corral kill-switch release" in refused.value.message
    if scope == "agent":
        await start(platform, "U3", agent="other-agent")

    await release_kill_switch(
        platform.store,
        scope=scope,  # type: ignore[arg-type]
        target=target,
        tenant_id="default",
        actor="user:ops",
    )
    again = await start(platform, "again")
    await platform.worker.run_until_idle()
    run, _ = await load(platform, again)
    assert (run.status, run.output) == ("SUCCEEDED", "again done")


async def test_kill_switch_abandons_an_in_flight_model_call(durable: DurablePlatform) -> None:
    ledger, entered = Ledger(), asyncio.Event()

    async def hang(_request: ModelRequest) -> FinalAnswer:
        entered.set()
        await asyncio.sleep(30)
        return FinalAnswer("too late")

    platform = await durable(ScriptedModel(hang), ledger)
    run_id = await start(platform)
    working = asyncio.create_task(platform.worker.run_until_idle())
    await asyncio.wait_for(entered.wait(), 20)
    await engage_kill_switch(
        platform.store,
        scope="tenant",
        target="default",
        tenant_id="default",
        reason="incident 42",
        actor="user:ops",
    )
    assert await platform.worker.check_signals() == [run_id]
    await asyncio.wait_for(working, 20)  # far below the model's 30 s: the call was abandoned
    run, steps = await load(platform, run_id)
    assert (run.status, run.terminal_reason, steps) == ("KILLED", "kill_switch", [])
    assert run.error == "kill switch 'tenant:default' engaged by user:ops: incident 42"


async def test_kill_switch_ends_a_paused_run_at_once(durable: DurablePlatform) -> None:
    ledger = Ledger()
    platform, _model, run_id = await in_doubt_run(durable, ledger)
    _info, ended = await engage_kill_switch(
        platform.store,
        scope="agent",
        target="repo-analyst",
        tenant_id="default",
        reason="stop it",
        actor="user:ops",
    )
    run, _ = await load(platform, run_id)
    assert (ended, run.status, run.terminal_reason, run.pause_reason) == (
        1,
        "KILLED",
        "kill_switch",
        None,
    )
    assert ledger.executions == [key(run_id, 0)]
