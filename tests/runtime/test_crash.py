"""The crash test: worker processes are ``kill -9``ed at random while they drive 100 runs.

Worker processes (``_crash_worker.py``: 3 on PostgreSQL, 1 on SQLite) drive runs that apply one
side effect per step through an idempotent ``write`` tool. A seeded killer ``kill -9``s a
random ready worker every 0.3-1.5 s and starts a new one in its place, for a bounded time; then
the workers finish. Every run must succeed, each step exactly once, each effect exactly once,
no run may be driven by two living workers, and a reclaimed run must continue from its last
checkpoint. A third of the runs pause for an approval once (``crash.gated``, step 2): the
test approves them through the REST API while the killer works, and they must resume from
where they paused, their gated effect applied once, after its approval.
``CORRAL_CRASH_SEED`` replays a schedule of kills and model delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from _crash_worker import (
    AGENT,
    AGENT_DOCUMENT,
    ATTEMPTS,
    EFFECT_STEPS,
    EFFECTS,
    GATED_POLICY,
    GATED_PREFIX,
    GATED_STEP,
    MODEL_CALLS,
    CrashWorld,
    builtins,
    create_tables,
)
from sqlalchemy import Connection, func, select

from conftest import register
from corral.api import create_app
from corral.approvals._tables import ApprovalRow
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES, create_run
from corral.runtime._tables import RunRow, StepRow, ToolCallRow
from corral.settings import GovernanceSettings, Settings, StoreSettings
from corral.tenancy import issue_key

SEED = int(os.environ.get("CORRAL_CRASH_SEED", "20261121"))
RUNS = 100
GATED_EVERY = 3
"""Every third run pauses for an approval."""
APPROVER = "user:crash-approver"
LEASE_SECONDS = 2.0
KILL_EVERY = (0.3, 1.5)
"""Seconds between two kills (counted once a worker is ready to be killed)."""
STARTUP_SECONDS = 120.0
"""Time the first workers get to be ready, counted from the last one that became ready (a
process imports Corral in 1-2 s of CPU; with a CPU hog, three starting at once took over 60 s)."""
CHAOS_SECONDS = 8.0
"""Time the killer works, from the moment the first workers are ready."""
STALL_SECONDS = 60.0
"""After the chaos: the workers must finish every run, and fail the test only if no run
finishes for this long (progress, not a total time: a loaded machine is slow, not stuck)."""
WORKER_SCRIPT = Path(__file__).with_name("_crash_worker.py")


@dataclass
class Fleet:
    """The worker processes: started, killed with SIGKILL, restarted, and always cleaned up."""

    directory: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: dict[str, float] = field(default_factory=dict)
    """Worker id -> ``time.time()`` once it was dead."""
    logs: dict[str, Path] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    def spawn(self) -> str:
        worker_id = f"crash-w{len(self.procs) + 1}"
        self.logs[worker_id] = self.directory / f"{worker_id}.log"
        log = self.logs[worker_id].open("wb")
        self._files.append(log)
        self.procs[worker_id] = subprocess.Popen(
            [
                sys.executable,
                str(WORKER_SCRIPT),
                worker_id,
                str(self._ready(worker_id)),
                str(SEED),
                str(os.getpid()),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return worker_id

    def _ready(self, worker_id: str) -> Path:
        return self.directory / f"{worker_id}.ready"

    def alive(self) -> list[str]:
        return sorted(w for w, p in self.procs.items() if p.poll() is None)

    def ready(self) -> list[str]:
        return [w for w in self.alive() if self._ready(w).exists()]

    def died_by_themselves(self) -> dict[str, int | None]:
        return {
            w: p.returncode
            for w, p in self.procs.items()
            if p.poll() is not None and w not in self.killed and p.returncode != 0
        }

    def kill(self, worker_id: str) -> None:
        proc = self.procs[worker_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed[worker_id] = time.time()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM the living workers, SIGKILL any that lingers; the exit codes of the ready ones.

        (A worker still starting has no SIGTERM handler yet: it just dies, which is fine.)
        """
        living = [w for w in self.alive() if self._ready(w).exists()]
        for worker_id in self.alive():
            if worker_id not in living:
                self.procs[worker_id].kill()
        for worker_id in living:
            self.procs[worker_id].send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for worker_id in living:
            try:
                codes[worker_id] = self.procs[worker_id].wait(timeout=60)
            except subprocess.TimeoutExpired:
                codes[worker_id] = None
        self.kill_all()
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self._files:
            log.close()

    def tails(self, lines: int = 15) -> str:
        parts = []
        for worker_id, path in self.logs.items():
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"--- {worker_id} ---\n" + "\n".join(text))
        return "\n".join(parts)


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    store = settings.store
    env.update(
        CORRAL_HOME=str(settings.home),
        CORRAL_STORE__URL=settings.store_url,
        CORRAL_RUNTIME__LEASE_SECONDS=str(LEASE_SECONDS),
        CORRAL_RUNTIME__POLL_INTERVAL_SECONDS="0.05",
        CORRAL_RUNTIME__SIGNAL_POLL_SECONDS="0.5",
        CORRAL_RUNTIME__WORKER_CONCURRENCY="4" if store.postgres_schema else "8",
    )
    if store.postgres_schema:
        env["CORRAL_STORE__POSTGRES_SCHEMA"] = store.postgres_schema
    return env


async def unfinished(platform: Platform) -> int:
    def count(connection: Connection) -> int:
        query = select(func.count()).where(RunRow.status.not_in(TERMINAL_STATUSES))
        return int(connection.execute(query).scalar_one())

    return await platform.store.run_sync(count, "default")


async def open_runs(platform: Platform) -> list[tuple[Any, ...]]:
    """What the unfinished runs are doing (for a failure's message)."""

    def read(connection: Connection) -> list[tuple[Any, ...]]:
        columns = (RunRow.task, RunRow.status, RunRow.lease_owner, RunRow.step_count)
        query = select(*columns).where(RunRow.status.not_in(TERMINAL_STATUSES))
        return [tuple(row) for row in connection.execute(query)]

    return await platform.store.run_sync(read, "default")


@dataclass
class Chaos:
    """What the killer did."""

    kills: int = 0
    seconds: float = 0.0
    finished_in: float = 0.0


async def unleash(
    platform: Platform, fleet: Fleet, workers: int, approver: Approver | None = None
) -> Chaos:
    """Start the workers, kill and restart them for a while, then let them finish."""
    rng, chaos = random.Random(SEED), Chaos()
    for _ in range(workers):
        await asyncio.to_thread(fleet.spawn)
    began, ready = time.monotonic(), 0
    while len(fleet.ready()) < workers:
        assert not fleet.died_by_themselves(), fleet.died_by_themselves()
        if approver is not None and approver.task is not None and approver.task.done():
            approver.task.result()  # raises what stopped it
        assert time.monotonic() - began < STARTUP_SECONDS, "the workers did not start"
        if len(fleet.ready()) > ready:
            began, ready = time.monotonic(), len(fleet.ready())
        await asyncio.sleep(0.05)
    began = time.monotonic()
    next_kill: float | None = None
    while time.monotonic() - began < CHAOS_SECONDS and await unfinished(platform):
        assert not fleet.died_by_themselves(), fleet.died_by_themselves()
        if approver is not None and approver.task is not None and approver.task.done():
            approver.task.result()  # raises what stopped it
        ready, now = fleet.ready(), time.monotonic()
        if next_kill is None and ready:
            next_kill = now + rng.uniform(*KILL_EVERY)
        elif next_kill is not None and now >= next_kill and ready:
            await asyncio.to_thread(fleet.kill, rng.choice(ready))
            await asyncio.to_thread(fleet.spawn)
            chaos.kills, next_kill = chaos.kills + 1, None
        await asyncio.sleep(0.05)
    chaos.seconds = time.monotonic() - began
    left, progressed = await unfinished(platform), time.monotonic()
    while left:
        assert not fleet.died_by_themselves(), fleet.died_by_themselves()
        if approver is not None and approver.task is not None and approver.task.done():
            approver.task.result()  # raises what stopped it
        assert time.monotonic() - progressed < STALL_SECONDS, (
            f"{left} runs unfinished, none finished in {STALL_SECONDS:.0f} s: "
            f"{await open_runs(platform)}"
        )
        await asyncio.sleep(0.2)
        now_left = await unfinished(platform)
        if now_left < left:
            left, progressed = now_left, time.monotonic()
    chaos.finished_in = time.monotonic() - began
    return chaos


@dataclass
class Approver:
    """Approves every pending request through ``POST /v1/approvals/{id}/approve``."""

    client: httpx.AsyncClient
    task: asyncio.Task[None] | None = None
    approved: dict[str, float] = field(default_factory=dict)
    """Run id -> ``time.time()`` just before the vote that granted its approval was sent."""

    async def run(self) -> None:
        while True:
            pending = await self.client.get("/v1/approvals", params={"status": "pending"})
            assert pending.status_code == 200, pending.text
            for approval in pending.json()["items"]:
                asked = time.time()
                voted = await self.client.post(f"/v1/approvals/{approval['id']}/approve", json={})
                assert voted.status_code == 200, voted.text
                assert voted.json()["status"] == "approved", voted.text
                self.approved[approval["run_id"]] = asked
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def approving(settings: Settings, world: CrashWorld) -> AsyncIterator[Approver]:
    """A served API (no worker) and an approver voting through it while the block runs."""
    app = create_app(Platform(settings, builtins=builtins(world)), run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    platform = app.state.platform
    key = await issue_key(
        platform.store,
        server_secret=platform.identity.server_secret,
        tenant_id="default",
        principal=APPROVER,
        roles=["approver"],
        name="crash-approver",
        kind="user",
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://corral",
        headers={"Authorization": f"Bearer {key}"},
    )
    approver = Approver(client)
    approver.task = task = asyncio.create_task(approver.run())
    try:
        yield approver
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def read_everything(connection: Connection) -> dict[str, list[Any]]:
    return {
        "pauses": connection.execute(
            select(AuditEventRow.run_id, AuditEventRow.actor, AuditEventRow.occurred_at)
            .where(AuditEventRow.action == "approval.requested")
            .order_by(AuditEventRow.seq)
        ).all(),
        "approvals": connection.execute(
            select(ApprovalRow.run_id, ApprovalRow.status, ApprovalRow.step_index)
        ).all(),
        "runs": connection.execute(select(RunRow.__table__)).all(),
        "steps": connection.execute(
            select(StepRow.run_id, StepRow.index, StepRow.kind).order_by(StepRow.index)
        ).all(),
        "calls": connection.execute(
            select(
                ToolCallRow.run_id,
                ToolCallRow.step_index,
                ToolCallRow.call_index,
                ToolCallRow.idempotency_key,
                ToolCallRow.status,
            ).order_by(ToolCallRow.step_index, ToolCallRow.call_index)
        ).all(),
        "leases": connection.execute(
            select(
                AuditEventRow.run_id,
                AuditEventRow.actor,
                AuditEventRow.details,
                AuditEventRow.occurred_at,
            )
            .where(AuditEventRow.action == "run.leased")
            .order_by(AuditEventRow.seq)
        ).all(),
        "effects": connection.execute(select(EFFECTS)).all(),
        "attempts": connection.execute(select(ATTEMPTS).order_by(ATTEMPTS.c.at)).all(),
        "model_calls": connection.execute(select(MODEL_CALLS)).all(),
    }


def handed_back(before: Any, after: Any, pauses: list[Any]) -> bool:
    """Whether ``before``'s worker let go of the run by pausing it (between the two leases)."""
    return any(
        p.actor == before.actor and before.occurred_at <= p.occurred_at <= after.occurred_at
        for p in pauses
    )


def check_approvals(
    data: dict[str, list[Any]], runs: dict[str, Any], approved: dict[str, float]
) -> None:
    """Each gated run paused once, at its gated step, and was approved once, through the API."""
    gated = {run_id for run_id, run in runs.items() if run.task.startswith(GATED_PREFIX)}
    assert gated, "no run paused for an approval: the test proved nothing"
    approvals = defaultdict(list)
    for approval in data["approvals"]:
        approvals[approval.run_id].append((approval.status, approval.step_index))
    assert approvals == {run_id: [("approved", GATED_STEP)] for run_id in gated}
    assert set(approved) == gated
    # The gated effect was attempted only once its approval was granted.
    for attempt in data["attempts"]:
        run_id, step, _ = attempt.idempotency_key.rsplit(":", 2)
        if run_id in gated and int(step) == GATED_STEP:
            assert attempt.at > approved[run_id], attempt


def check(data: dict[str, list[Any]], fleet: Fleet, approved: dict[str, float]) -> dict[str, Any]:
    """Assert the invariants over everything stored; returns the figures."""
    runs = {r.id: r for r in data["runs"]}
    assert len(runs) == RUNS, "a run was lost or invented"
    check_approvals(data, runs, approved)
    pauses: dict[str, list[Any]] = defaultdict(list)
    for pause in data["pauses"]:
        pauses[pause.run_id].append(pause)
    steps: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for s in data["steps"]:
        steps[s.run_id].append((s.index, s.kind))
    calls: dict[str, list[Any]] = defaultdict(list)
    for c in data["calls"]:
        calls[c.run_id].append(c)
    leases: dict[str, list[Any]] = defaultdict(list)
    for lease in data["leases"]:
        leases[lease.run_id].append(lease)
    model_calls = Counter(m.task for m in data["model_calls"])
    taken_over: set[tuple[str, str]] = set()
    """(run id, worker) pairs where a living worker's lease was taken over (see below)."""
    expected_kinds = ["tool_calls"] * EFFECT_STEPS + ["final_answer"]

    for run_id, run in runs.items():
        # Every run reached a terminal state, successfully, and let go of its lease.
        assert (run.status, run.output) == ("SUCCEEDED", f"{run.task}: 5 effects applied"), run
        assert run.lease_owner is None
        # Each step exactly once, contiguous from 0; one decision counted per step.
        assert [i for i, _ in steps[run_id]] == list(range(EFFECT_STEPS + 1)), steps[run_id]
        assert [k for _, k in steps[run_id]] == expected_kinds
        assert (run.step_count, run.iterations, run.tool_call_count) == (6, 6, EFFECT_STEPS)
        assert [(c.idempotency_key, c.status) for c in calls[run_id]] == [
            (f"{run_id}:{n}:0", "COMPLETED") for n in range(EFFECT_STEPS)
        ]
        # A lease only ever passed on from a dead worker, after its death, or from a worker
        # that paused the run for its approval; and a reclaimed run went on from where it was
        # (never back to an earlier step). A living worker starved past its lease (a CPU hog
        # can do that to a 2 s lease) may lose it too: its writes are fenced on the lease epoch
        # from then on, which the exactly-once checks here prove.
        held = leases[run_id]
        assert held[0].details["from_step"] == 0
        assert [lease.details["lease_epoch"] for lease in held] == list(range(1, len(held) + 1))
        for before, after in itertools.pairwise(held):
            assert after.details["from_step"] >= before.details["from_step"]
            if handed_back(before, after, pauses[run_id]):
                continue
            owner = before.actor.removeprefix("worker:")
            if not (owner in fleet.killed and after.occurred_at.timestamp() > fleet.killed[owner]):
                taken_over.add((run_id, owner))
        # Model calls: one per step, plus at most the one each dead worker was making.
        assert 6 <= model_calls[run.task] <= 6 + len(held) - 1, (run.task, len(held))

    keys = {c.idempotency_key for c in data["calls"]}
    assert len(keys) == len(data["calls"]) == RUNS * EFFECT_STEPS
    # Every effect took place, once: one row per call key, carrying that step's n.
    assert sorted(e.idempotency_key for e in data["effects"]) == sorted(keys)
    assert all(e.idempotency_key == f"{e.run_id}:{e.n}:0" for e in data["effects"])
    # A call was attempted again only after the worker attempting it had died, or had lost
    # its lease to another while it lived.
    attempts: dict[str, list[Any]] = defaultdict(list)
    for a in data["attempts"]:
        attempts[a.idempotency_key].append(a)
    assert set(attempts) == keys
    for key, tries in attempts.items():
        run_id = key.split(":")[0]
        for before, after in itertools.pairwise(tries):
            if (run_id, before.worker) in taken_over:
                continue
            assert before.worker in fleet.killed, f"{key} attempted by living {before.worker}"
            assert after.at > fleet.killed[before.worker], key

    relets = [lease for held in leases.values() for lease in held[1:]]
    return {
        "runs": len(runs),
        "approved_runs": len(approved),
        "reclaims": len(relets),
        "reclaimed_runs": sum(len(held) > 1 for held in leases.values()),
        "reclaims_from_step_gt_0": sum(lease.details["from_step"] > 0 for lease in relets),
        "keys_attempted_more_than_once": sum(len(t) > 1 for t in attempts.values()),
        "max_attempts_per_key": max(len(t) for t in attempts.values()),
        "max_model_calls_per_run": max(model_calls.values()),
        "leases_taken_from_living_workers": len(taken_over),
    }


@pytest.mark.timeout(600)  # ~20 s on an idle 2-core machine; room for a loaded one
async def test_killed_workers_lose_no_run_and_repeat_no_effect(
    store_settings: StoreSettings, tmp_path: Path
) -> None:
    postgres = store_settings.postgres_schema is not None
    workers = 3 if postgres else 1
    settings = Settings(
        home=tmp_path / "home",
        store=store_settings,
        governance=GovernanceSettings(policy_refresh_seconds=0),
    )
    world = CrashWorld("test", SEED)
    platform = Platform(settings, builtins=builtins(world))
    await platform.start()
    fleet = Fleet(tmp_path, worker_env(settings))
    print(f"CORRAL_CRASH_SEED={SEED} ({'postgresql' if postgres else 'sqlite'}, {workers} workers)")
    try:
        await platform.store.run_sync(create_tables, "default")
        await register(platform, AGENT_DOCUMENT, GATED_POLICY)
        async with platform.store.transaction("default") as session:
            for n in range(RUNS):
                kind = GATED_PREFIX if n % GATED_EVERY == 0 else "crash"
                await create_run(
                    session,
                    tenant_id="default",
                    agent_name=AGENT,
                    task=f"{kind} run {n:03d}",
                    requested_by="user:test",
                )
        async with approving(settings, world) as approver:
            try:
                chaos = await unleash(platform, fleet, workers, approver)
            finally:
                exits = await asyncio.to_thread(fleet.stop)
        assert all(code == 0 for code in exits.values()), exits
        everything = await platform.store.run_sync(read_everything, "default")
        figures = check(everything, fleet, approver.approved)
        async with platform.store.transaction("default") as session:
            assert (await verify_chain(session, tenant_id="default")).ok
        assert chaos.kills >= 1, "no worker was killed: the test proved nothing"
        assert figures["reclaims_from_step_gt_0"] >= 1, figures
        print(
            f"kills={chaos.kills} restarts={len(fleet.procs) - workers} "
            f"chaos={chaos.seconds:.1f}s all_done={chaos.finished_in:.1f}s {figures}"
        )
    except BaseException:
        print(f"reproduce with CORRAL_CRASH_SEED={SEED}\n{fleet.tails()}")
        raise
    finally:
        fleet.kill_all()
        await platform.close()
