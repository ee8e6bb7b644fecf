"""Scale-out on PostgreSQL: runs/s of ONE tenant with 1, 2 and 3 worker processes.

Each worker is a separate OS process running a :class:`corral.platform.Platform` worker, as
``corral worker`` does (this script re-runs itself with ``--worker-process``). All of them drive
the runs of one tenant (``default``) in one fresh PostgreSQL schema (dropped at the end).

Per configuration the script creates ``--runs`` runs (not timed), starts the worker processes,
waits until every one of them is connected and ready, then lets them all go at once and times
until every run is terminal. Every run makes ``--model-calls`` model calls to a scripted
I/O-bound model (:class:`corral.testing.ScriptedModel` sleeping ``--model-seconds`` per call):
``fs.list_dir('.')`` on an empty workspace for all but the last call, then a final answer. So a
run is ``--model-calls`` checkpointed steps, each with its audit events, spans and run events.

Reported per configuration: runs/s, wall seconds, audit events appended per second, the CPU
seconds the worker processes used (user + system, from ``wait4``), and how many of the schema's
connections were waiting for a lock on ``audit_heads`` (the tenant's chain head), sampled every
50 ms from ``pg_stat_activity`` (mean): on a machine too busy to show the throughput, this shows
whether the chain head is what the workers wait for. The script refuses a
result unless every run ``SUCCEEDED`` with the expected steps, and at the end the tenant's audit
chain must verify end to end (:func:`corral.audit.verify_chain`, what ``corral audit verify``
calls).

    python benchmarks/scale_out.py                        # 1, 2 and 3 workers x 64
    python benchmarks/scale_out.py --workers 1 3 --concurrency 16 --json /tmp/scale.json

The URL must be a superuser's: the script creates a role and a schema, and drops both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.contracts import parse_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.testing import ScriptedModel

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
AGENT = "bench-scale-out"
TENANT = "default"
NOOP_TOOL = "fs.list_dir"
TERMINAL = (
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "REJECTED",
    "TIMED_OUT",
    "BUDGET_EXCEEDED",
    "KILLED",
)


class BenchError(Exception):
    """The runs did not do what the benchmark asked: the numbers would be meaningless."""


def agent_document(model_calls: int) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": AGENT},
        "spec": {
            "description": "Scale-out benchmark agent.",
            "owner": "bench",
            "instructions": "List the workspace, then answer.",
            "model": {"default": "scripted/bench"},
            "tools": {"allowed": ["fs.*"]},
            "limits": {
                "max_iterations": model_calls + 1,
                "max_tool_calls": model_calls,
                "max_wall_clock_seconds": 3600,
            },
        },
    }


def settings_for(args: argparse.Namespace, home: Path, workspace_root: Path) -> Settings:
    # Every process (the control process and each worker) declares the same process count so
    # that their pools together fit the server's max_connections. They connect as the role the
    # orchestrator created (named like the schema): row-level security applies, as in production.
    return Settings(
        home=home,
        store={
            "url": str(make_url(args.postgres_url).set(username=args.schema, password=None)),
            "postgres_schema": args.schema,
            "processes": max(args.workers) + 1,
        },
        runtime={"worker_concurrency": args.concurrency},
        workspaces={"roots": [workspace_root]},
    )


# --- worker process ----------------------------------------------------------------------------


async def worker_process(args: argparse.Namespace) -> None:
    """One ``corral worker``: start, say ``ready``, wait for ``go`` on stdin, work until EOF."""

    async def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
        done = sum(1 for m in request.messages if m.role == "assistant")
        await asyncio.sleep(args.model_seconds)
        if done < args.model_calls - 1:
            return ToolCall(f"call_{done}", NOOP_TOOL, {"path": "."})
        return FinalAnswer("done")

    home = Path(args.home) / f"worker-{os.getpid()}"
    settings = settings_for(args, home, Path(args.workspace_root))
    platform = Platform(settings, providers={"scripted": ScriptedModel(decide)}, migrate=False)
    await platform.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    try:
        print("ready", flush=True)
        if (await reader.readline()).strip() != b"go":
            return
        task = asyncio.create_task(platform.worker.run(stop))
        await reader.read()  # EOF: the orchestrator is done with us
        stop.set()
        await task
    finally:
        await platform.close()


# --- orchestrator ------------------------------------------------------------------------------


async def admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


_ADMIN_ENGINES: dict[str, Any] = {}


async def lock_waiters(url: str, schema: str) -> tuple[int, int]:
    """Connections of the benchmark's role waiting for a lock: on ``audit_heads``, in all."""
    engine = _ADMIN_ENGINES.get(url)
    if engine is None:
        engine = _ADMIN_ENGINES[url] = create_async_engine(url, pool_size=1)
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE query LIKE '%audit_heads%'), count(*) "
                    "FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = :role"
                ),
                {"role": schema},
            )
        ).one()
    return int(row[0]), int(row[1])


def spawn_workers(args: argparse.Namespace, count: int) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker-process",
        "--postgres-url",
        args.postgres_url,
        "--schema",
        args.schema,
        "--home",
        args.home,
        "--workspace-root",
        args.workspace_root,
        "--model-calls",
        str(args.model_calls),
        "--model-seconds",
        str(args.model_seconds),
        "--concurrency",
        str(args.concurrency),
        "--workers",
        *map(str, args.workers),
    ]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            for other in procs:
                other.kill()
            raise BenchError(f"a worker process did not start (said {line!r})")
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> float:
    """Close the workers' stdin (they stop after their runs checkpoint); their CPU seconds."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    cpu = 0.0
    for proc in procs:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except ChildProcessError:
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode:
            raise BenchError(f"worker process {proc.pid} exited with {proc.returncode}")
    return cpu


async def configuration(
    args: argparse.Namespace, control: Platform, workers: int
) -> dict[str, Any]:
    workspace = Path(args.workspace_root) / f"ws-{workers}-{uuid.uuid4().hex[:6]}"
    workspace.mkdir()
    async with control.store.transaction(TENANT) as session:
        run_ids = [
            (
                await create_run(
                    session,
                    tenant_id=TENANT,
                    agent_name=AGENT,
                    task=f"scale-out run {n}",
                    requested_by="user:bench",
                    workspace=str(workspace),
                    workspaces=control.workspaces,
                )
            ).id
            for n in range(args.runs)
        ]
    async with control.store.read(TENANT) as session:
        events_before = (
            await session.execute(select(func.count()).select_from(AuditEventRow))
        ).scalar_one()
    procs = await asyncio.to_thread(spawn_workers, args, workers)
    try:
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        done, head_waits, lock_waits, samples = 0, 0, 0, 0
        while done < args.runs:
            if time.perf_counter() - began > args.deadline_seconds:
                raise BenchError(f"only {done}/{args.runs} runs terminal after the deadline")
            await asyncio.sleep(0.05)
            head, locks = await lock_waiters(args.postgres_url, args.schema)
            head_waits, lock_waits, samples = head_waits + head, lock_waits + locks, samples + 1
            async with control.store.read(TENANT) as session:
                done = (
                    await session.execute(
                        select(func.count())
                        .select_from(RunRow)
                        .where(RunRow.id.in_(run_ids), RunRow.status.in_(TERMINAL))
                    )
                ).scalar_one()
        wall = time.perf_counter() - began
    finally:
        cpu = await asyncio.to_thread(stop_workers, procs)
    async with control.store.read(TENANT) as session:
        rows = (
            await session.execute(
                select(RunRow.status, RunRow.step_count, func.count())
                .where(RunRow.id.in_(run_ids))
                .group_by(RunRow.status, RunRow.step_count)
            )
        ).all()
        events_after = (
            await session.execute(select(func.count()).select_from(AuditEventRow))
        ).scalar_one()
    outcome = {f"{status}/{steps}": int(n) for status, steps, n in rows}
    if outcome != {f"SUCCEEDED/{args.model_calls}": args.runs}:
        raise BenchError(
            f"{workers} workers: expected {args.runs} runs SUCCEEDED with {args.model_calls} "
            f"steps, got {outcome}"
        )
    appended = events_after - events_before
    return {
        "workers": workers,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "wall_s": round(wall, 2),
        "runs_per_s": round(args.runs / wall, 1),
        "audit_events": appended,
        "audit_events_per_s": round(appended / wall, 1),
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_ms_per_run": round(cpu / args.runs * 1e3, 1),
        "audit_head_lock_waiters_mean": round(head_waits / max(samples, 1), 2),
        "lock_waiters_mean": round(lock_waits / max(samples, 1), 2),
    }


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    await admin(
        args.postgres_url,
        f"CREATE ROLE {args.schema} LOGIN NOSUPERUSER NOBYPASSRLS",
        f"CREATE SCHEMA {args.schema} AUTHORIZATION {args.schema}",
    )
    control: Platform | None = None
    try:
        control = Platform(
            settings_for(args, Path(args.home) / "control", Path(args.workspace_root))
        )
        await control.start()
        async with control.store.transaction(TENANT) as session:
            await apply_documents(
                session,
                [parse_document(agent_document(args.model_calls))],
                tenant_id=TENANT,
                actor="user:bench",
            )
        results = []
        for workers in args.workers:
            result = await configuration(args, control, workers)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
        async with control.store.read(TENANT) as session:
            verification = await verify_chain(session, tenant_id=TENANT)
        if not verification.ok:
            raise BenchError(f"the audit chain does not verify: {verification}")
        return {
            "machine": {
                "python": pyplatform.python_version(),
                "cpus": os.cpu_count(),
                "system": pyplatform.platform(),
            },
            "model_calls_per_run": args.model_calls,
            "model_seconds": args.model_seconds,
            "results": results,
            "audit_chain": {"ok": verification.ok, "events": verification.events_checked},
        }
    finally:
        if control is not None:
            await control.close()
        for engine in _ADMIN_ENGINES.values():
            await engine.dispose()
        await admin(
            args.postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename = '{args.schema}'",
            f"DROP SCHEMA {args.schema} CASCADE",
            f"DROP ROLE {args.schema}",
        )


def table(report: dict[str, Any]) -> str:
    lines = [
        "| workers x concurrency | runs/s | wall s | audit events/s | worker CPU ms/run "
        "| waiting on audit_heads | waiting on any lock |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workers']} x {r['concurrency']} | {r['runs_per_s']} | {r['wall_s']} | "
            f"{r['audit_events_per_s']} | {r['worker_cpu_ms_per_run']} | "
            f"{r['audit_head_lock_waiters_mean']} | {r['lock_waiters_mean']} |"
        )
    chain = report["audit_chain"]
    lines.append(f"\naudit chain verifies: {chain['ok']} ({chain['events']} events)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CORRAL_TEST_POSTGRES_URL", DEFAULT_PG_URL),
    )
    parser.add_argument("--runs", type=int, default=200, help="runs per configuration")
    parser.add_argument("--model-calls", type=int, default=5, help="model calls per run (2..)")
    parser.add_argument("--model-seconds", type=float, default=0.2, help="wait of each call")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 3], help="worker processes to try"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="worker_concurrency")
    parser.add_argument("--deadline-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    # Internal: how the orchestrator starts a worker process.
    parser.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--workspace-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model_calls < 2:
        parser.error("--model-calls must be at least 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
        asyncio.run(worker_process(args))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.schema = f"bench_scale_{uuid.uuid4().hex[:10]}"
        args.home = str(Path(tmp) / "homes")
        args.workspace_root = str(Path(tmp) / "workspaces")
        Path(args.workspace_root).mkdir()
        report = asyncio.run(orchestrate(args))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
