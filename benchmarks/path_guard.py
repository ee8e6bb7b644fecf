"""Cost of path guards on directory-walking tools (ADR 0005).

A workspace of ``--dirs`` directories with ``--files`` small text files each, plus a
``secrets/`` directory of the same shape. ``fs.list_dir`` on each directory and
``fs.search_text`` on ``.`` run with three guards, measured round-robin (one call of each in
turn, ``--repeat`` times, after a warm-up):

* ``no guard``: no path decider (the call is not governed);
* ``no path policy``: the engine holds only the shipped defaults, which read no
  ``context.path``: :meth:`PolicyEngine.reads_path` says so and no entry is decided;
* ``path policy``: the defaults plus a forbid on ``secrets/``: every entry is decided once by
  Cedar (the guard's per-call cache; one batched Cedar call per directory), and ``secrets/`` is
  pruned from the walk.

Each call gets a fresh guard, as each tool call does. Latency is ``time.perf_counter_ns()``
around each call; p50 and p99 over the calls, and the decisions made per call.

Run: ``python benchmarks/path_guard.py [--dirs 20] [--files 50] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from corral.gateway.tools._fs import BUILTIN_TOOLS
from corral.gateway.tools._guard import PathGuard, path_guard_scope
from corral.policy import (
    DEFAULT_POLICIES,
    Entity,
    EntityRef,
    PolicyContext,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
)

NO_SECRETS = (
    'forbid (principal, action == Action::"tool.call", resource)\n'
    'when { context has path && (context.path == "secrets" || context.path like "secrets/*") };'
)


def build_workspace(root: Path, dirs: int, files: int) -> None:
    for name in [f"d{i:03d}" for i in range(dirs)] + ["secrets"]:
        (root / name).mkdir()
        for j in range(files):
            (root / name / f"f{j:03d}.txt").write_text(f"line one\nneedle {name} {j}\n")


def decider(
    engine: PolicyEngine, tool: str
) -> tuple[Callable[[Sequence[str]], list[bool]] | None, list[int]]:
    """The decider a call of ``tool`` on ``.`` gets, and a counter of its decisions."""
    agent = Entity(
        EntityRef("Agent", "bench"),
        {"tenant": "t", "owner": "ops", "risk_tier": "low", "status": "active"},
    )
    resource = Entity(
        EntityRef("Tool", tool),
        {"tenant": "t", "owner": "ops", "side_effect": "read", "risk": "low", "kind": "builtin"},
    )
    entities = engine.entities([agent, resource])
    request = PolicyRequest(agent.uid, "tool.call", resource.uid, PolicyContext("t", "dev", "u"))
    count = [0]
    if not engine.reads_path(request):
        return None, count

    def decide(paths: Sequence[str]) -> list[bool]:
        count[0] += len(paths)
        return [kind == "allow" for kind in engine.decide_paths(request, entities, paths)]

    return decide, count


async def one_call(
    tool: str,
    workspace: Path,
    decide: Callable[[Sequence[str]], list[bool]] | None,
    **arguments: object,
) -> int:
    start = time.perf_counter_ns()
    with path_guard_scope(PathGuard(decide)):
        await BUILTIN_TOOLS[tool].run(dict(arguments), workspace, max_file_bytes=1_000_000)
    return time.perf_counter_ns() - start


async def main(dirs: int, files: int, repeat: int) -> None:
    engines = {
        "no guard": None,
        "no path policy": PolicyEngine(DEFAULT_POLICIES),
        "path policy": PolicyEngine([*DEFAULT_POLICIES, PolicySource("no-secrets", NO_SECRETS)]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        build_workspace(workspace, dirs, files)
        cases = [
            ("fs.list_dir .", "fs.list_dir", {"path": "."}),
            ("fs.list_dir d000", "fs.list_dir", {"path": "d000"}),
            ("fs.search_text .", "fs.search_text", {"path": ".", "query": "needle"}),
        ]
        for label, tool, arguments in cases:
            times: dict[str, list[int]] = {name: [] for name in engines}
            decisions: dict[str, int] = {}
            for round_ in range(repeat + 2):  # two warm-up rounds
                for name, engine in engines.items():
                    decide, count = decider(engine, tool) if engine else (None, [0])
                    elapsed = await one_call(tool, workspace, decide, **arguments)
                    if round_ >= 2:
                        times[name].append(elapsed)
                    decisions[name] = count[0]
            for name, samples in times.items():
                samples.sort()
                p50 = statistics.median(samples) / 1e6
                p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e6
                print(
                    f"{label:<20} {name:<15} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  "
                    f"decisions/call {decisions[name]}"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirs", type=int, default=20)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.dirs, args.files, args.repeat))
