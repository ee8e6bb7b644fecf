"""``GET /metrics`` scrape time (target: <= 50 ms), Prometheus text and OpenMetrics.

One process, one app (``corral.api.create_app``, a temp home, no worker, ``metrics_public``),
requests through ``httpx.ASGITransport`` (the whole ASGI stack, no sockets). Before measuring,
the registry is filled to a realistic size: ``--agents`` agents x 7 terminal statuses, the step
histogram of each agent, ``--tools`` tools x 3 outcomes, ``--models`` models' token and
duration histograms and ``--breakers`` open tool breakers. Each scrape also counts the QUEUED
runs in the store (the queue-depth gauge: one ``count(*)`` on ``ix_runs_claim``).

Latency is ``time.perf_counter_ns()`` around each request, and CPU ``time.process_time_ns()``
(less sensitive to other processes on a shared machine); p50 / p95 / max over ``--scrapes``
requests after 20 warm-up requests; the exposition's size and series count are reported.

Run: ``PYTHONPATH=src python benchmarks/metrics_scrape.py [--scrapes 200] [--store-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from corral.api import create_app
from corral.observability import (
    count_run_finished,
    count_tool_call,
    observe_model_call,
    observe_step,
)
from corral.platform import Platform
from corral.settings import Settings

_STATUSES = ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED", "TIMED_OUT", "BUDGET_EXCEEDED")


class _Usage:
    input_tokens = 900
    output_tokens = 120
    cache_read_tokens = 300
    reasoning_tokens = 0


async def fill_registry(args: argparse.Namespace, platform: Platform) -> None:
    """Series of a busy deployment: per agent, tool, model, and some open breakers."""
    for a in range(args.agents):
        agent = f"agent-{a:03d}"
        for status in (*_STATUSES, "KILLED"):
            count_run_finished(status, "final_answer", agent=agent)
        for seconds in (0.05, 0.4, 3.0):
            observe_step(agent, seconds, trace_id=f"{a + 1:032x}")
    for t in range(args.tools):
        for decision, outcome in (("allow", "COMPLETED"), ("allow", "FAILED"), ("deny", "DENIED")):
            count_tool_call(f"tool-{t:03d}", decision, outcome)
    for m in range(args.models):
        for seconds in (0.2, 1.5):
            observe_model_call("openai", f"model-{m}", seconds, usage=_Usage())
    breakers = platform.tools.resilience.breakers
    for b in range(args.breakers):
        for _ in range(breakers.failure_threshold):
            await breakers.record_failure(f"mcp:server-{b:02d}")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="corral-metrics-bench-"))
    store = {"url": args.store_url} if args.store_url else {}
    settings = Settings(home=home, store=store, observability={"metrics_public": True})
    platform = Platform(settings)
    app = create_app(platform, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    await fill_registry(args, platform)
    results: dict[str, Any] = {}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            for label, accept in (
                ("prometheus text", "text/plain"),
                ("openmetrics", "application/openmetrics-text; version=1.0.0"),
            ):
                results[label] = await _scrapes(client, accept, args.scrapes)
    finally:
        await lifespan.__aexit__(None, None, None)
    return results


async def _scrapes(client: httpx.AsyncClient, accept: str, count: int) -> dict[str, float]:
    headers = {"Accept": accept}
    for _ in range(20):
        assert (await client.get("/metrics", headers=headers)).status_code == 200
    samples: list[float] = []
    cpu: list[float] = []
    body = b""
    for _ in range(count):
        started, started_cpu = time.perf_counter_ns(), time.process_time_ns()
        response = await client.get("/metrics", headers=headers)
        samples.append((time.perf_counter_ns() - started) / 1e6)
        cpu.append((time.process_time_ns() - started_cpu) / 1e6)
        body = response.content
    samples.sort()
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {
        "p50_ms": statistics.median(samples),
        "cpu_p50_ms": statistics.median(cpu),
        "p95_ms": samples[int(len(samples) * 0.95) - 1],
        "max_ms": samples[-1],
        "bytes": len(body),
        "series": series,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--tools", type=int, default=100)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--breakers", type=int, default=10)
    parser.add_argument("--store-url", default=None, help="default: SQLite in a temp home")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    print("| format | p50 ms | p95 ms | max ms | CPU p50 ms | series | bytes |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['max_ms']:.2f} | "
            f"{r['cpu_p50_ms']:.2f} | {r['series']} | {r['bytes']} |"
        )


if __name__ == "__main__":
    main()
