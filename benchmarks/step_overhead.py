"""CPU overhead per step of a governed Corral run, next to bare baselines in the same process.

Variants (all measured in this one process invocation, see benchmarks/README.md):

* ``bare asyncio loop``: per step, await a no-op coroutine "model call" and a no-op "tool".
* ``bare sqlite3``: per step, one INSERT + COMMIT with the stdlib ``sqlite3`` module (WAL,
  ``synchronous=NORMAL``, temp file). The reference every ratio is computed against.
* ``bare aiosqlite``: the same INSERT + COMMIT through ``aiosqlite`` (a thread hop per call).
* ``SQLAlchemy AsyncSession``: the same INSERT + COMMIT through ``corral.store.Store`` (Corral's
  engine settings: aiosqlite, WAL, ``BEGIN IMMEDIATE``), one ``store.transaction()`` per step.
* ``corral``: a :class:`corral.platform.Platform` with settings as shipped, a ``scripted``
  provider (:class:`corral.testing.ScriptedModel`) that calls the builtin ``fs.list_dir`` on an
  empty workspace for N-1 steps and then answers; runs are created with
  :func:`corral.runtime.create_run` and driven by ``platform.worker.run_until_idle()``.
  Measured twice: runs created then executed together (the worker's shipped concurrency), and
  one run at a time.

Run: ``python benchmarks/step_overhead.py [--runs 20] [--steps 10] [--repeat 5] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import platform as pyplatform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import sqlalchemy
from sqlalchemy import event, func, select, text

from corral.contracts import parse_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run, start_run
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import Settings
from corral.store import Store
from corral.testing import ScriptedModel

AGENT = "bench-agent"
NOOP_TOOL = "fs.list_dir"
PAYLOAD = json.dumps({"tool_calls": [{"id": "call_0", "name": NOOP_TOOL, "arguments": {}}]})
ONE_STEP_TASK = "one-step run"
REFERENCE = "bare sqlite3: INSERT+COMMIT per step (WAL, synchronous=NORMAL)"


@dataclass
class Sample:
    """One measurement: totals over ``steps`` steps."""

    steps: int
    cpu_s: float
    wall_s: float
    main_thread_cpu_s: float


@dataclass
class Result:
    """Every repeat of one variant, reduced to microseconds per step."""

    variant: str
    samples: list[Sample] = field(default_factory=list)

    def per_step(self, attr: str) -> list[float]:
        return [getattr(s, attr) / s.steps * 1e6 for s in self.samples]

    def summary(self) -> dict[str, float]:
        cpu, wall = self.per_step("cpu_s"), self.per_step("wall_s")
        main = self.per_step("main_thread_cpu_s")
        return {
            "cpu_us_median": statistics.median(cpu),
            "cpu_us_min": min(cpu),
            "wall_us_median": statistics.median(wall),
            "wall_us_min": min(wall),
            "main_thread_cpu_us_median": statistics.median(main),
        }


class Clock:
    """Process CPU (every thread, so aiosqlite's too), main-thread CPU and wall time."""

    def __enter__(self) -> Clock:
        gc.collect()
        self._cpu, self._main, self._wall = (
            time.process_time(),
            time.thread_time(),
            time.perf_counter(),
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.cpu = time.process_time() - self._cpu
        self.main = time.thread_time() - self._main
        self.wall = time.perf_counter() - self._wall

    def sample(self, steps: int) -> Sample:
        return Sample(steps, self.cpu, self.wall, self.main)


# --- baselines ---------------------------------------------------------------------------------


async def _noop_model() -> None:
    return None


async def _noop_tool() -> None:
    return None


async def bare_asyncio(steps: int) -> Sample:
    with Clock() as clock:
        for _ in range(steps):
            await _noop_model()
            await _noop_tool()
    return clock.sample(steps)


_CREATE = "CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY, idx INTEGER, payload TEXT)"
_INSERT = "INSERT INTO steps (idx, payload) VALUES (?, ?)"


async def bare_sqlite3(steps: int, path: Path) -> Sample:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_CREATE)
    conn.commit()
    try:
        with Clock() as clock:
            for i in range(steps):
                await _noop_model()
                await _noop_tool()
                conn.execute(_INSERT, (i, PAYLOAD))
                conn.commit()
    finally:
        conn.close()
    return clock.sample(steps)


async def bare_aiosqlite(steps: int, path: Path) -> Sample:
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute(_CREATE)
        await conn.commit()
        with Clock() as clock:
            for i in range(steps):
                await _noop_model()
                await _noop_tool()
                await conn.execute(_INSERT, (i, PAYLOAD))
                await conn.commit()
    return clock.sample(steps)


async def sqlalchemy_session(steps: int, store: Store) -> Sample:
    async with store.engine.begin() as conn:
        await conn.execute(text(_CREATE))
    insert = text("INSERT INTO steps (idx, payload) VALUES (:idx, :payload)")
    with Clock() as clock:
        for i in range(steps):
            await _noop_model()
            await _noop_tool()
            async with store.transaction("default") as session:
                await session.execute(insert, {"idx": i, "payload": PAYLOAD})
    return clock.sample(steps)


# --- corral ------------------------------------------------------------------------------------


def script(steps: int) -> Callable[[ModelRequest], ToolCall | FinalAnswer]:
    """``fs.list_dir('dN')`` for the first ``steps - 1`` model calls of a run, then an answer.

    Each call lists another empty directory ``d0``, ``d1``...: a call repeating an earlier one
    is answered without executing it (loop detection), which would not measure a real step.
    A run whose task starts with :data:`ONE_STEP_TASK` answers at once (one step, no tool).
    """

    def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        if any(m.role == "user" and m.content.startswith(ONE_STEP_TASK) for m in request.messages):
            return FinalAnswer("done")
        done = sum(1 for m in request.messages if m.role == "assistant")
        if done < steps - 1:
            return ToolCall("call_0", NOOP_TOOL, {"path": f"d{done}"})
        return FinalAnswer("done")

    return decide


def agent_document(steps: int) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": AGENT},
        "spec": {
            "description": "Step-overhead benchmark agent.",
            "owner": "bench",
            "instructions": "List the workspace, then answer.",
            "model": {"default": "scripted/bench"},
            "tools": {"allowed": ["fs.*"]},
            "limits": {
                "max_iterations": steps + 1,
                "max_tool_calls": steps,
                "max_wall_clock_seconds": 3600,
            },
        },
    }


async def _create(platform: Platform, workspace: Path, task: str) -> str:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name=AGENT,
            task=task,
            requested_by="bench",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
        return run.id


async def _start(platform: Platform, workspace: Path, task: str) -> str:
    """A run created as ``POST /v1/agents/{name}/runs`` does: quotas, policy, kill switches."""
    run = await start_run(
        platform.store,
        tenant_id="default",
        agent_name=AGENT,
        task=task,
        requested_by="user:bench",
        requester_roles=("builder",),
        workspace=str(workspace),
        workspaces=platform.workspaces,
        governance=platform.governance,
        quotas=platform.quotas,
    )
    return run.id


async def _verify(platform: Platform, run_ids: list[str], steps: int) -> int:
    """Fail loudly unless every run SUCCEEDED with ``steps`` checkpointed steps; returns steps."""
    async with platform.store.transaction("default") as session:
        rows = (
            await session.execute(
                select(
                    RunRow.id,
                    RunRow.status,
                    RunRow.step_count,
                    RunRow.tool_call_count,
                    RunRow.error,
                ).where(RunRow.id.in_(run_ids))
            )
        ).all()
        completed = (
            await session.execute(
                select(func.count())
                .select_from(ToolCallRow)
                .where(ToolCallRow.run_id.in_(run_ids), ToolCallRow.status == "COMPLETED")
            )
        ).scalar_one()
    bad = [
        r
        for r in rows
        if (r.status, r.step_count, r.tool_call_count) != ("SUCCEEDED", steps, steps - 1)
    ]
    if len(rows) != len(run_ids) or bad:
        raise SystemExit(
            f"corral runs did not finish as expected ({len(rows)}/{len(run_ids)} found); "
            f"expected SUCCEEDED with {steps} steps and {steps - 1} tool calls, got e.g. "
            f"{[tuple(r) for r in bad[:3]]}"
        )
    if completed != len(run_ids) * (steps - 1):
        raise SystemExit(
            f"{NOOP_TOOL} did not complete on every step: {completed} COMPLETED tool calls, "
            f"expected {len(run_ids) * (steps - 1)}"
        )
    return sum(r.step_count for r in rows)


async def corral_together(
    platform: Platform, workspace: Path, runs: int, steps: int
) -> tuple[Sample, Sample]:
    """Create ``runs`` runs, then execute them all with one ``run_until_idle``.

    Returns:
        ``(execution only, creation + execution)``, both per checkpointed step.
    """
    with Clock() as create:
        run_ids = [await _create(platform, workspace, f"task {i}") for i in range(runs)]
    with Clock() as execute:
        await platform.worker.run_until_idle()
    total = await _verify(platform, run_ids, steps)
    both = Sample(
        total, create.cpu + execute.cpu, create.wall + execute.wall, create.main + execute.main
    )
    return execute.sample(total), both


async def corral_one_at_a_time(
    platform: Platform, workspace: Path, runs: int, steps: int
) -> Sample:
    """Create and execute one run at a time (creation included)."""
    run_ids = []
    with Clock() as clock:
        for i in range(runs):
            run_ids.append(await _create(platform, workspace, f"task {i}"))
            await platform.worker.run_until_idle()
    total = await _verify(platform, run_ids, steps)
    return clock.sample(total)


@dataclass
class FixedCost:
    """CPU of one-step runs executed one at a time, split by phase, in seconds (totals)."""

    runs: int
    create_cpu_s: float
    execute_cpu_s: float
    wall_s: float


async def corral_fixed_cost(platform: Platform, workspace: Path, runs: int) -> FixedCost:
    """The fixed cost of a run: ``runs`` one-step runs (the model answers at once), one at a time.

    ``create`` is :func:`corral.runtime.start_run` as the API calls it (quotas, policy
    decision, kill switches, the run and its audit event); ``execute`` is ``run_until_idle()``: the
    claim, the load, one model call, the final checkpoint (and the claim that finds nothing).
    """
    create_cpu = execute_cpu = wall = 0.0
    run_ids = []
    gc.collect()
    for i in range(runs):
        started = time.perf_counter()
        cpu = time.process_time()
        run_ids.append(await _start(platform, workspace, f"{ONE_STEP_TASK} {i}"))
        created = time.process_time()
        await platform.worker.run_until_idle()
        execute_cpu += time.process_time() - created
        create_cpu += created - cpu
        wall += time.perf_counter() - started
    async with platform.store.transaction("default") as session:
        rows = (
            await session.execute(
                select(RunRow.status, RunRow.step_count).where(RunRow.id.in_(run_ids))
            )
        ).all()
    if len(rows) != runs or any(tuple(r) != ("SUCCEEDED", 1) for r in rows):
        raise SystemExit(f"one-step runs did not all SUCCEED in one step: {rows[:3]}")
    return FixedCost(runs, create_cpu, execute_cpu, wall)


def count_statements(platform: Platform) -> Callable[[], dict[str, int]]:
    """Count SQL statements and commits on the platform's engine until the returned fn is called."""
    counts = {"statements": 0, "commits": 0}
    engine = platform.store.engine.sync_engine

    def on_execute(*_: Any) -> None:
        counts["statements"] += 1

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)

    def stop() -> dict[str, int]:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
        return counts

    return stop


# --- driver ------------------------------------------------------------------------------------


async def measure(
    results: dict[str, Result],
    name: str,
    repeat: int,
    fn: Callable[[], Awaitable[Sample]],
) -> None:
    await fn()  # warm-up
    result = results.setdefault(name, Result(name))
    for _ in range(repeat):
        result.samples.append(await fn())


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Result] = {}
    base_steps = args.baseline_steps
    sa_steps = max(1, base_steps // 4)

    await measure(
        results,
        "bare asyncio loop: no-op model + no-op tool per step",
        args.repeat,
        lambda: bare_asyncio(base_steps),
    )
    counter = iter(range(10_000))

    def fresh(suffix: str) -> Path:
        return tmp / f"baseline-{next(counter)}.{suffix}"

    await measure(
        results, REFERENCE, args.repeat, lambda: bare_sqlite3(base_steps, fresh("sqlite3.db"))
    )
    await measure(
        results,
        "bare aiosqlite: INSERT+COMMIT per step (WAL, synchronous=NORMAL)",
        args.repeat,
        lambda: bare_aiosqlite(base_steps, fresh("aiosqlite.db")),
    )
    sa_store = Store(f"sqlite+aiosqlite:///{tmp / 'sqlalchemy.db'}")
    try:
        await measure(
            results,
            "SQLAlchemy AsyncSession (corral.store.Store): 1 INSERT per transaction",
            args.repeat,
            lambda: sqlalchemy_session(sa_steps, sa_store),
        )
    finally:
        await sa_store.dispose()

    workspace = tmp / "workspace"
    workspace.mkdir()
    for index in range(args.steps):
        (workspace / f"d{index}").mkdir()
    settings = Settings(home=tmp / "home", workspaces={"roots": [tmp]})
    if settings.store_url != f"sqlite+aiosqlite:///{tmp / 'home' / 'corral.db'}":
        raise SystemExit(
            f"CORRAL_STORE__URL points the store elsewhere ({settings.store_url}); unset it: "
            "this benchmark measures the shipped SQLite store in a temp directory"
        )
    platform = Platform(settings, providers={"scripted": ScriptedModel(script(args.steps))})
    await platform.start()
    extra: dict[str, Any] = {}
    try:
        async with platform.store.transaction("default") as session:
            await apply_documents(
                session,
                [parse_document(agent_document(args.steps))],
                tenant_id="default",
                actor="user:bench",
            )
        provider = platform.models.providers["scripted"]
        assert isinstance(provider, ScriptedModel)

        # Warm-up, counting SQL statements per step on the way (not timed).
        stop = count_statements(platform)
        warm_runs = max(2, args.runs // 4)
        await corral_together(platform, workspace, warm_runs, args.steps)
        counts = stop()
        extra["sql_per_step"] = {
            key: value / (warm_runs * args.steps) for key, value in counts.items()
        }
        await corral_one_at_a_time(platform, workspace, warm_runs, args.steps)

        execute_name = (
            f"corral: {args.runs} runs x {args.steps} steps, executed together "
            f"(worker_concurrency={platform.worker.concurrency})"
        )
        both_name = "corral: same, create_run included"
        for _ in range(args.repeat):
            provider.requests.clear()
            execute, both = await corral_together(platform, workspace, args.runs, args.steps)
            results.setdefault(execute_name, Result(execute_name)).samples.append(execute)
            results.setdefault(both_name, Result(both_name)).samples.append(both)
        one_name = f"corral: {args.runs} runs x {args.steps} steps, one run at a time (+create)"
        for _ in range(args.repeat):
            provider.requests.clear()
            sample = await corral_one_at_a_time(platform, workspace, args.runs, args.steps)
            results.setdefault(one_name, Result(one_name)).samples.append(sample)

        await corral_fixed_cost(platform, workspace, max(2, args.fixed_runs // 4))  # warm-up
        fixed = []
        for _ in range(args.repeat):
            provider.requests.clear()
            fixed.append(await corral_fixed_cost(platform, workspace, args.fixed_runs))
        extra["fixed_cost"] = fixed

        if args.profile:
            provider.requests.clear()
            gc.collect()
            profiler = cProfile.Profile()
            profiler.enable()
            run_ids = [await _create(platform, workspace, f"task {i}") for i in range(args.runs)]
            await platform.worker.run_until_idle()
            profiler.disable()
            await _verify(platform, run_ids, args.steps)
            extra["profile"] = profiler
            extra["profile_steps"] = args.runs * args.steps
    finally:
        await platform.close()

    return {"results": results, **extra}


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    results: dict[str, Result] = report["results"]
    reference = results[REFERENCE].summary()["cpu_us_median"]
    lines = [
        f"Corral step overhead: {args.runs} runs x {args.steps} steps for corral, "
        f"{args.baseline_steps} steps per bare baseline ({max(1, args.baseline_steps // 4)} for "
        f"SQLAlchemy), {args.repeat} repeats after a warm-up; CPU = time.process_time() "
        "(all threads), wall = time.perf_counter().",
        f"No-op tool in the corral runs: builtin {NOOP_TOOL} on an empty temp workspace "
        "(through the tool gateway, one asyncio.to_thread hop).",
        "",
        "| variant | CPU us/step (median) | min | wall us/step "
        "| ratio to bare SQLite commit loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        s = result.summary()
        lines.append(
            f"| {name} | {s['cpu_us_median']:.1f} | {s['cpu_us_min']:.1f} | "
            f"{s['wall_us_median']:.1f} | {s['cpu_us_median'] / reference:.1f}x |"
        )
    lines.append("")
    for name, result in results.items():
        if name.startswith("corral"):
            s = result.summary()
            share = s["main_thread_cpu_us_median"] / s["cpu_us_median"]
            lines.append(
                f"- {name}: {s['main_thread_cpu_us_median']:.0f} us/step CPU in the event-loop "
                f"thread ({share:.0%}); the rest in aiosqlite's and asyncio.to_thread's threads."
            )
    if "fixed_cost" in report:
        lines += ["", *render_fixed_cost(report["fixed_cost"], reference)]
    if "sql_per_step" in report:
        sql = report["sql_per_step"]
        lines.append(
            f"- corral SQL per step (incl. claim, load and create_run, amortised): "
            f"{sql['statements']:.1f} statements, {sql['commits']:.2f} commits."
        )
    lines.append("")
    lines.append(
        f"Python {pyplatform.python_version()} ({pyplatform.python_implementation()}), "
        f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}, "
        f"aiosqlite {aiosqlite.__version__}, {pyplatform.machine()} {sys.platform}."
    )
    return "\n".join(lines)


def fixed_cost_summary(samples: list[FixedCost]) -> dict[str, float]:
    """Medians over the repeats, in microseconds per run."""

    def per_run(fn: Callable[[FixedCost], float]) -> float:
        return statistics.median(fn(s) / s.runs * 1e6 for s in samples)

    return {
        "create_cpu_us": per_run(lambda s: s.create_cpu_s),
        "execute_cpu_us": per_run(lambda s: s.execute_cpu_s),
        "total_cpu_us": per_run(lambda s: s.create_cpu_s + s.execute_cpu_s),
        "total_cpu_us_min": min((s.create_cpu_s + s.execute_cpu_s) / s.runs * 1e6 for s in samples),
        "wall_us": per_run(lambda s: s.wall_s),
    }


def render_fixed_cost(samples: list[FixedCost], reference: float) -> list[str]:
    s = fixed_cost_summary(samples)
    return [
        f"Fixed cost of a run: {samples[0].runs} one-step runs (the model answers at once), "
        "one at a time; CPU per run (median of the repeats):",
        "",
        "| phase | CPU us/run | ratio to one bare SQLite commit |",
        "|---|---:|---:|",
        f"| start_run: quotas, policy, run + audit (one transaction) | {s['create_cpu_us']:.0f} "
        f"| {s['create_cpu_us'] / reference:.0f}x |",
        f"| claim + load + 1 model step + final checkpoint | {s['execute_cpu_us']:.0f} "
        f"| {s['execute_cpu_us'] / reference:.0f}x |",
        f"| total (min {s['total_cpu_us_min']:.0f}) | {s['total_cpu_us']:.0f} "
        f"| {s['total_cpu_us'] / reference:.0f}x |",
        "",
        f"Wall per run: {s['wall_us']:.0f} us.",
    ]


def _package(filename: str, name: str) -> str:
    """Group a profile entry: ``corral/runtime/_loop.py``, ``sqlalchemy``, ``asyncio``..."""
    if filename == "~":
        if "epoll" in name:
            return "(idle: waiting in epoll)"
        if "SimpleQueue" in name:
            return "(queue.SimpleQueue put: thread hand-off)"
        return "(builtins)"
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/")[1].split("/")[0]
    if "/src/corral/" in path:
        return "corral/" + path.split("/src/corral/")[1]
    if "/asyncio/" in path:
        return "asyncio"
    return Path(path).name


def print_profile(profiler: cProfile.Profile, steps: int) -> None:
    stats = pstats.Stats(profiler)
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("cumulative").print_stats(25)
    stats = pstats.Stats(profiler)  # unstripped, for grouping by package
    print("\n### cProfile of one corral batch (event-loop thread only), top 25 by cumulative\n")
    print("Coroutine and greenlet switches make the cumulative column over-count; the grouped")
    print("self-time table below is the better guide to where the time goes.\n")
    print(out.getvalue().strip())

    grouped: dict[str, float] = {}
    hops = 0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, ncalls, tottime, _ct, _callers) in raw.items():
        key = _package(filename, name)
        grouped[key] = grouped.get(key, 0.0) + tottime
        if filename == "~" and name == "<method 'put_nowait' of '_queue.SimpleQueue' objects>":
            hops += ncalls
    busy = sum(v for k, v in grouped.items() if not k.startswith("(idle"))
    print(f"\n### Self time grouped by package/module, per step ({steps} steps, profiled)\n")
    print("| where | us/step (profiled) | share of busy time |")
    print("|---|---:|---:|")
    for key, value in sorted(grouped.items(), key=lambda kv: -kv[1])[:20]:
        share = "" if key.startswith("(idle") else f"{value / busy:.0%}"
        print(f"| {key} | {value / steps * 1e6:.0f} | {share} |")
    print(
        f"\naiosqlite thread hand-offs (SimpleQueue.put_nowait): {hops / steps:.1f} per step, "
        "each a round trip event loop -> aiosqlite thread -> event loop."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU overhead per step of a governed Corral run, next to bare baselines."
    )
    parser.add_argument("--runs", type=int, default=20, help="corral runs per measurement")
    parser.add_argument("--steps", type=int, default=10, help="steps per corral run (2..999)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per variant")
    parser.add_argument(
        "--baseline-steps", type=int, default=2000, help="steps per baseline measurement"
    )
    parser.add_argument(
        "--fixed-runs", type=int, default=50, help="one-step runs per fixed-cost measurement"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one corral batch; print the top 25"
    )
    args = parser.parse_args(argv)
    if not 2 <= args.steps <= 999:
        parser.error("--steps must be 2..999 (one tool step at least; max_iterations <= 1000)")
    if args.runs < 1 or args.repeat < 1 or args.baseline_steps < 1 or args.fixed_runs < 1:
        parser.error("--runs, --repeat, --baseline-steps and --fixed-runs must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        report = asyncio.run(main_async(args, Path(tmp)))
    print(render(report, args))
    if "profile" in report:
        print_profile(report["profile"], report["profile_steps"])
    if args.json:
        results: dict[str, Result] = report["results"]
        reference = results[REFERENCE].summary()["cpu_us_median"]
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "python": pyplatform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sqlalchemy.__version__,
            "aiosqlite": aiosqlite.__version__,
            "noop_tool": NOOP_TOOL,
            "sql_per_step": report.get("sql_per_step"),
            "fixed_cost_us_per_run": fixed_cost_summary(report["fixed_cost"]),
            "variants": [
                {
                    "variant": name,
                    **r.summary(),
                    "ratio_to_bare_sqlite": r.summary()["cpu_us_median"] / reference,
                    "samples": [asdict(s) for s in r.samples],
                }
                for name, r in results.items()
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
