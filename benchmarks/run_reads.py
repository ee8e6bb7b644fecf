"""Writer-thread CPU per call of the run's fixed-cost reads: SQLAlchemy execute vs direct.

The claim's ``UPDATE ... RETURNING`` (every column of the run), ``start_run``'s stage-version
read and ``load_run``'s tool read, each timed ``--calls`` times in one writer transaction with
``time.thread_time``: ``connection.execute(statement, parameters).all()`` against
``execute_direct(connection, statement, parameters, processed=True)``. Asserts first that both
return the same values of the same types. SQLite, in a temp directory.

Run: ``python benchmarks/run_reads.py [--calls 2000] [--repeat 3]`` (the minimum of the repeats).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

sys.path.insert(0, str(Path(__file__).parent))

import step_overhead as bench

from corral.contracts import parse_document
from corral.registry import apply_documents
from corral.runtime import _persist, _service
from corral.settings import Settings
from corral.store import SYSTEM, execute_direct, utcnow


def _time(connection: Connection, calls: int, repeat: int) -> dict[str, dict[str, float]]:
    far = utcnow() + timedelta(days=3650)
    # b_expires before b_now: the run's lease is expired again at once, so every call reclaims it.
    claim = {"b_now": far, "b_limit": 1, "b_owner": "w", "b_expires": far - timedelta(days=1)}
    agent = bench.agent_document(2)["metadata"]["name"]
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("claim UPDATE ... RETURNING (1 run row)", _persist._CLAIMS[0], claim),
        (
            "start_run's stage-version read",
            _service._STAGE_VERSION,
            {"b_tenant": "default", "b_agent": agent, "b_stage": "dev"},
        ),
        ("load_run's tool read (no tools)", _persist._LOAD_TOOLS, {"b_tenant": "default"}),
    ]
    out: dict[str, dict[str, float]] = {}
    for name, statement, parameters in cases:
        core = connection.execute(statement, parameters).all()
        direct = execute_direct(connection, statement, parameters, processed=True)
        if [[type(v) for v in r] for r in core] != [[type(v) for v in r] for r in direct]:
            raise SystemExit(f"{name}: different value types: {core} vs {direct}")
        samples: dict[str, list[float]] = {}
        for _ in range(repeat):
            for label, run in _calls(connection, statement, parameters):
                started = time.thread_time()
                for _ in range(calls):
                    run()
                samples.setdefault(label, []).append((time.thread_time() - started) / calls * 1e6)
        out[name] = {label: min(values) for label, values in samples.items()}
    return out


def _calls(
    connection: Connection, statement: Any, parameters: dict[str, Any]
) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("execute", lambda: connection.execute(statement, parameters).all()),
        ("direct", lambda: execute_direct(connection, statement, parameters, processed=True)),
    ]


async def main(calls: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        workspace = tmp / "workspace"
        workspace.mkdir()
        settings = Settings(home=tmp / "home", workspaces={"roots": [tmp]})
        platform = bench.Platform(
            settings, providers={"scripted": bench.ScriptedModel(bench.script(2))}
        )
        await platform.start()
        try:
            async with platform.store.transaction("default") as session:
                await apply_documents(
                    session,
                    [parse_document(bench.agent_document(2))],
                    tenant_id="default",
                    actor="user:bench",
                )
            await bench._start(platform, workspace, "a task")
            results = await platform.store.run_sync(lambda c: _time(c, calls, repeat), SYSTEM)
        finally:
            await platform.close()
    print("| statement | execute(...).all() us | execute_direct(processed=True) us | ratio |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        ratio = r["direct"] / r["execute"]
        print(f"| {name} | {r['execute']:.1f} | {r['direct']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeat))
