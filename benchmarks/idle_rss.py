"""Resident memory of idle Corral processes, next to a bare ``sqlalchemy`` + ``fastapi`` process.

Starts, on a temporary ``CORRAL_HOME`` with the embedded SQLite store, the processes an
operator runs and leaves idle:

- ``corral worker`` (after ``corral db upgrade``), ready when it prints ``worker ... polling``;
- ``corral up --no-local-model``, ready when ``GET /healthz`` answers 200 (``--local-model``
  starts the embedded model too; its server is a child process, not counted here);

and, as the baseline, ``python -c "import sqlalchemy, fastapi"`` kept alive. Each process's
``VmRSS`` (and ``VmHWM``, its peak) is read from ``/proc/PID/status`` after it has been idle for
``--settle`` seconds. Module counts come from separate ``python -c`` imports of
``corral.platform``, ``corral.cli`` and ``corral.api`` (``sys.modules``, total and how many of
them belong to the ``openai``, ``anthropic``, ``mcp``, ``llama_cpp`` packages).

    python benchmarks/idle_rss.py
    python benchmarks/idle_rss.py --compare-src /path/to/older/checkout/src   # before/after
    python benchmarks/idle_rss.py --json /tmp/idle_rss.json

Every figure comes from child processes started with this interpreter; ``--compare-src``
measures a second source tree in the same invocation; each tree's ``src/`` is put first on
``PYTHONPATH`` (this checkout's for the ``this`` rows).
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TARGET_MB = 90.0
"""Issue 11, item 6: an idle worker or ``corral up`` process at most this many MB RSS."""

HEAVY = ("openai", "anthropic", "mcp", "mcp_types", "llama_cpp", "alembic", "uvicorn")
"""Top-level packages whose loaded modules are counted separately."""

_COUNT_MODULES = """
import collections, json, sys
import {module}
tops = collections.Counter(name.split(".")[0] for name in sys.modules)
print(json.dumps({{"total": len(sys.modules), "by_package": dict(tops)}}))
"""

_BASELINE = "import sqlalchemy, fastapi, sys; print('ready', flush=True); sys.stdin.read()"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in MB (1 MB = 1024 kB, as /proc reports kB)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def _environment(src: Path | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        )
    return env


def _corral(*args: str) -> list[str]:
    # What the ``corral`` console script runs, with this interpreter and PYTHONPATH.
    return [sys.executable, "-c", "from corral.cli import main; main()", *args]


@contextmanager
def _started(command: list[str], env: dict[str, str], *, stdin: bool = False) -> Iterator[Any]:
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if process.stdin is not None:
            process.stdin.close()


def _wait_line(process: Any, fragment: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if fragment in line:
            return
    raise RuntimeError(f"process never printed {fragment!r}; output:\n{''.join(seen[-20:])}")


def _wait_http(url: str, process: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"`corral up` exited ({process.returncode}): {process.stdout.read()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _measure(process: Any, settle: float) -> dict[str, float]:
    time.sleep(settle)
    if process.poll() is not None:
        raise RuntimeError(f"process exited ({process.returncode}) while idle")
    return _status(process.pid)


def measure_baseline(settle: float) -> dict[str, float]:
    """RSS of a process that imported ``sqlalchemy`` and ``fastapi`` and waits."""
    with _started([sys.executable, "-c", _BASELINE], dict(os.environ), stdin=True) as process:
        _wait_line(process, "ready", 60)
        return _measure(process, settle)


def measure_worker(src: Path | None, settle: float) -> dict[str, float]:
    """RSS of an idle ``corral worker`` on a fresh, migrated SQLite store."""
    with tempfile.TemporaryDirectory(prefix="corral-rss-") as tmp:
        env = _environment(src, Path(tmp))
        subprocess.run(_corral("db", "upgrade"), env=env, check=True, capture_output=True)
        with _started(_corral("worker"), env) as process:
            _wait_line(process, "polling", 120)
            return _measure(process, settle)


def measure_up(src: Path | None, settle: float, *, local_model: bool) -> dict[str, float]:
    """RSS of an idle ``corral up`` (the Corral process itself, not the model server)."""
    with tempfile.TemporaryDirectory(prefix="corral-rss-") as tmp:
        env = _environment(src, Path(tmp))
        port = _free_port()
        env["CORRAL_LOCAL_MODEL__PORT"] = str(_free_port())
        flag = "--local-model" if local_model else "--no-local-model"
        with _started(_corral("up", "--port", str(port), flag), env) as process:
            _wait_http(f"http://127.0.0.1:{port}/healthz", process, 300)
            return _measure(process, settle)


def count_modules(src: Path | None, module: str) -> dict[str, Any]:
    """``sys.modules`` after ``import module`` in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="corral-rss-") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _COUNT_MODULES.format(module=module)],
            env=_environment(src, Path(tmp)),
            check=True,
            capture_output=True,
            text=True,
        )
    counted: dict[str, Any] = json.loads(done.stdout)
    return counted


def _tree(label: str, src: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    processes = {
        "corral worker": measure_worker(src, args.settle),
        "corral up --no-local-model": measure_up(src, args.settle, local_model=False),
    }
    if args.local_model:
        processes["corral up (model running)"] = measure_up(src, args.settle, local_model=True)
    modules = {name: count_modules(src, name) for name in args.modules}
    return {"label": label, "src": str(src) if src else None, "rss": processes, "modules": modules}


def _print(trees: list[dict[str, Any]], baseline: dict[str, float]) -> None:
    base = baseline["VmRSS"]
    print(f"baseline `import sqlalchemy, fastapi`: {base:.1f} MB RSS")
    print(f"{'tree':10} {'process':30} {'RSS MB':>7} {'peak MB':>8} {'x base':>7} target")
    for tree in trees:
        for name, figures in tree["rss"].items():
            rss = figures["VmRSS"]
            verdict = "ok" if rss <= TARGET_MB else f"> {TARGET_MB:.0f}"
            print(
                f"{tree['label']:10} {name:30} {rss:7.1f} {figures['VmHWM']:8.1f} "
                f"{rss / base:7.2f} {verdict}"
            )
    print(f"\n{'tree':10} {'import':18} {'modules':>7}  " + " ".join(HEAVY))
    for tree in trees:
        for name, counted in tree["modules"].items():
            heavy = " ".join(str(counted["by_package"].get(p, 0)) for p in HEAVY)
            print(f"{tree['label']:10} {name:18} {counted['total']:7d}  {heavy}")


def main() -> None:
    """Parse arguments, measure, print a table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading")
    parser.add_argument("--compare-src", type=Path, help="an older src/ to measure too")
    parser.add_argument("--local-model", action="store_true", help="also `corral up` with model")
    parser.add_argument(
        "--modules", nargs="+", default=["corral.platform", "corral.cli", "corral.api"]
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("idle_rss.py reads /proc/PID/status: Linux only")
    baseline = measure_baseline(args.settle)
    trees = []
    if args.compare_src is not None:
        trees.append(_tree("compare", args.compare_src.resolve(), args))
    trees.append(_tree("this", Path(__file__).resolve().parents[1] / "src", args))
    _print(trees, baseline)
    if args.json is not None:
        args.json.write_text(json.dumps({"baseline": baseline, "trees": trees}, indent=2))


if __name__ == "__main__":
    main()
