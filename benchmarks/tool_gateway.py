"""Latency the tool gateway adds to an ``http`` tool call, next to calling the API directly.

One process invocation measures both paths against the same local upstream, a minimal ASGI app
served by uvicorn in a **separate process** (so it does not compete for this process's GIL):
``GET /ping`` answers ``{"ok":true}``.

* ``direct httpx``: ``httpx.AsyncClient.get(url)`` and read the body, one pooled client (the
  floor: what any caller pays for the request itself).
* ``gateway``: what a managed run does for one read-only tool call, end to end: the
  ``execute_tool`` span, ``ToolGateway.prepare`` (resolve, JSON Schema validation of the
  arguments), the ``tool.call`` policy decision by ``Governance.decide`` with the shipped default
  policies (Cedar), then ``ToolGateway.execute``: rate limits per tenant, agent and tool (the
  ``limits`` library, memory storage unless ``--rate-limit-storage-url``), the circuit breaker
  and retry wrapper (tenacity), the secret scope, request mapping, the SSRF guard's pooled
  connection, response formatting, redaction and the size cap. The tool is an ``http`` tool with
  ``allow_hosts: [127.0.0.1]`` and rates high enough never to refuse.

Sequential: ``--calls`` calls of each path, interleaved one by one (direct, gateway, direct...)
so that the noise of a shared machine falls on both alike. Concurrent: ``--clients`` asyncio
tasks each making ``--calls / --clients`` calls, one path at a time, the two paths alternated
``--rounds`` times. Latency is ``time.perf_counter_ns()`` around each call; the tables give
p50 and p99 in milliseconds, the added latency (gateway minus direct), the ratio, and the CPU
time of the event loop's thread per call (``time.thread_time_ns()``; the upstream runs in its
own process, so this is the client side's work alone, the figure least disturbed by other jobs
on a shared machine).

A third table times the gateway's steps alone (no network), ``--calls`` times each: prepare,
the policy decision, the three rate-limit hits.

Run: ``python benchmarks/tool_gateway.py [--calls 1000] [--clients 20] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from corral.contracts import Agent, AgentTools
from corral.gateway.tools import ResolvedTool, ToolCallContext, ToolGateway, ToolResult
from corral.gateway.tools._gateway import PreparedCall
from corral.observability import Tracing, new_trace_id
from corral.platform import Platform
from corral.policy import EntityRef, PolicyContext, PolicyRequest
from corral.policy._service import Governance, agent_entity, tool_entity
from corral.settings import Settings, ToolSettings

TENANT = "default"
AGENT = Agent.model_validate(
    {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": "bench-agent"},
        "spec": {
            "description": "Benchmark agent.",
            "owner": "bench",
            "instructions": "Call ping.",
            "tools": {"allowed": ["bench.*"]},
        },
    }
)
UNLIMITED = "100000000/minute"


# --- the upstream (its own process) -------------------------------------------------------------


async def ping_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: every HTTP request gets ``{"ok":true}``."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(ping_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/ping", timeout=1).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the upstream did not start on {url}")


# --- the two paths ------------------------------------------------------------------------------


def ping_tool(url: str) -> ResolvedTool:
    return ResolvedTool.from_document(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": "bench.ping", "version": "1.0.0"},
            "spec": {
                "description": "Ping the upstream.",
                "type": "http",
                "input_schema": {
                    "type": "object",
                    "properties": {"note": {"type": "string", "maxLength": 100}},
                    "additionalProperties": False,
                },
                "http": {"url": f"{url}/ping", "allow_hosts": ["127.0.0.1"]},
            },
        }
    )


class GatewayPath:
    """One tool call the way the runtime's tool phase makes it (minus the store writes)."""

    def __init__(
        self, gateway: ToolGateway, governance: Governance, tracing: Tracing, tool: ResolvedTool
    ) -> None:
        self.gateway = gateway
        self.governance = governance
        self.tracing = tracing
        self.trace_id = new_trace_id()
        self.tools = {tool.name: tool}
        self.agent_tools = AgentTools(allowed=["bench.*"])
        self.entities = [
            agent_entity("bench-agent", TENANT, AGENT.spec),
            tool_entity(tool, TENANT),
        ]
        self.ctx = ToolCallContext(
            TENANT, "run_bench", 0, 0, None, frozenset(self.tools), principal="agent:bench-agent"
        )

    def prepare(self) -> PreparedCall:
        prepared = self.gateway.prepare(
            self.ctx, self.tools, "bench.ping", {"note": "hi"}, agent_tools=self.agent_tools
        )
        assert isinstance(prepared, PreparedCall), prepared
        return prepared

    async def decide(self, prepared: PreparedCall) -> None:
        request = PolicyRequest(
            principal=EntityRef("Agent", "bench-agent"),
            action="tool.call",
            resource=EntityRef("Tool", prepared.tool.name),
            context=PolicyContext(
                tenant=TENANT, stage="dev", requester="user:bench", arguments=prepared.arguments
            ),
        )
        decision = await self.governance.decide(TENANT, request, self.entities)
        assert decision.decision == "allow", decision

    async def __call__(self) -> None:
        with Tracing.trace(self.trace_id), self.gateway.span(self.ctx, "bench.ping", "c") as record:
            prepared = self.prepare()
            await self.decide(prepared)
            result: ToolResult = await self.gateway.execute(self.ctx, prepared)
            record(result)
        assert result.status == "COMPLETED", result.output
        # The runtime drains a step's spans into its checkpoint; here they are dropped.
        self.tracing.exporter.discard(self.trace_id)


async def timed(call: Callable[[], Awaitable[None]], samples: list[int]) -> None:
    started = time.perf_counter_ns()
    await call()
    samples.append(time.perf_counter_ns() - started)


class Cpu:
    """CPU time of this (the event loop's) thread, summed per path."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}

    def add(self, name: str, started_ns: int) -> None:
        self.ns[name] = self.ns.get(name, 0) + time.thread_time_ns() - started_ns


async def sequential(
    paths: dict[str, Callable[[], Awaitable[None]]], calls: int, cpu: Cpu
) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in paths}
    for _ in range(calls):
        for name, call in paths.items():
            started = time.thread_time_ns()
            await timed(call, samples[name])
            cpu.add(name, started)
    return samples


async def concurrent(
    paths: dict[str, Callable[[], Awaitable[None]]],
    calls: int,
    clients: int,
    rounds: int,
    cpu: Cpu,
) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in paths}
    per_client = max(calls // clients // rounds, 1)

    async def client(call: Callable[[], Awaitable[None]], into: list[int]) -> None:
        for _ in range(per_client):
            await timed(call, into)

    for _ in range(rounds):
        for name, call in paths.items():
            started = time.thread_time_ns()
            await asyncio.gather(*(client(call, samples[name]) for _ in range(clients)))
            cpu.add(name, started)
    return samples


async def components(path: GatewayPath, calls: int) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {"prepare": [], "policy decision": [], "rate limits": []}
    prepared = path.prepare()
    limiter = path.gateway.resilience.rate_limiter
    for _ in range(calls):
        started = time.perf_counter_ns()
        path.prepare()
        samples["prepare"].append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        await path.decide(prepared)
        samples["policy decision"].append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        await limiter.acquire(path.ctx, "bench.ping")
        samples["rate limits"].append(time.perf_counter_ns() - started)
    return samples


# --- report -------------------------------------------------------------------------------------


def percentile_ms(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] / 1e6


def table(title: str, samples: dict[str, list[int]], cpu: Cpu) -> list[dict[str, Any]]:
    direct = samples["direct httpx"]
    d50, d99 = percentile_ms(direct, 0.5), percentile_ms(direct, 0.99)
    d_cpu = cpu.ns["direct httpx"] / len(direct) / 1000
    rows = []
    print(f"\n{title}")
    print(f"{'path':<14} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
          f"{'x p50':>6} {'x p99':>6} {'CPU us':>7} {'+CPU us':>7}")  # fmt: skip
    for name, values in samples.items():
        p50, p99 = percentile_ms(values, 0.5), percentile_ms(values, 0.99)
        cpu_us = cpu.ns[name] / len(values) / 1000
        row = {"path": name, "calls": len(values), "p50_ms": p50, "p99_ms": p99,
               "added_p50_ms": p50 - d50, "added_p99_ms": p99 - d99,
               "ratio_p50": p50 / d50, "ratio_p99": p99 / d99,
               "cpu_us_per_call": cpu_us, "added_cpu_us_per_call": cpu_us - d_cpu}  # fmt: skip
        rows.append(row)
        print(f"{name:<14} {len(values):>6} {p50:>8.3f} {p99:>8.3f} {p50 - d50:>8.3f} "
              f"{p99 - d99:>8.3f} {p50 / d50:>6.2f} {p99 / d99:>6.2f} {cpu_us:>7.0f} "
              f"{cpu_us - d_cpu:>7.0f}")  # fmt: skip
    return rows


def component_table(samples: dict[str, list[int]]) -> list[dict[str, Any]]:
    print("\nGateway steps alone (no network)")
    print(f"{'step':<16} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}")
    rows = []
    for name, values in samples.items():
        p50, p99 = percentile_ms(values, 0.5) * 1000, percentile_ms(values, 0.99) * 1000
        mean = statistics.fmean(values) / 1000
        rows.append({"step": name, "p50_us": p50, "p99_us": p99, "mean_us": mean})
        print(f"{name:<16} {p50:>8.1f} {p99:>8.1f} {mean:>8.1f}")
    return rows


# --- main ---------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, url: str, home: Path) -> dict[str, Any]:
    tools = ToolSettings(
        rate_limit_per_tool=UNLIMITED,
        rate_limit_per_agent=UNLIMITED,
        rate_limit_per_tenant=UNLIMITED,
        rate_limit_storage_url=args.rate_limit_storage_url,
    )
    platform = Platform(Settings(home=home, tools=tools))
    await platform.start()
    direct_client = httpx.AsyncClient()
    try:
        path = GatewayPath(platform.tools, platform.governance, platform.tracing, ping_tool(url))

        async def direct() -> None:
            response = await direct_client.get(f"{url}/ping")
            response.raise_for_status()
            response.json()

        paths: dict[str, Callable[[], Awaitable[None]]] = {"direct httpx": direct, "gateway": path}
        await sequential(paths, args.warmup, Cpu())
        seq_cpu, conc_cpu = Cpu(), Cpu()
        seq = await sequential(paths, args.calls, seq_cpu)
        conc = await concurrent(paths, args.calls, args.clients, args.rounds, conc_cpu)
        parts = await components(path, args.calls)
    finally:
        await direct_client.aclose()
        await platform.close()
    print(f"\nupstream {url}; rate-limit storage {tools.rate_limit_storage_url or 'memory'}")
    return {
        "sequential": table(f"Sequential: {args.calls} calls per path, interleaved", seq, seq_cpu),
        "concurrent": table(
            f"Concurrent: {args.clients} clients, {args.rounds} rounds per path", conc, conc_cpu
        ),
        "components": component_table(parts),
        "samples_ns": {"sequential": seq, "concurrent": conc, "components": parts},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per path and mode")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=5, help="alternations in the concurrent mode")
    parser.add_argument("--warmup", type=int, default=100, help="calls per path before measuring")
    parser.add_argument(
        "--rate-limit-storage-url", default=None, help="e.g. redis://127.0.0.1:6379"
    )
    parser.add_argument("--json", type=Path, default=None, help="write results and samples here")
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return
    process, url = start_upstream()
    try:
        with tempfile.TemporaryDirectory() as home:
            os.environ.pop("CORRAL_STORE__URL", None)
            results = asyncio.run(measure(args, url, Path(home)))
    finally:
        process.terminate()
        process.wait(timeout=10)
    results["environment"] = {
        "python": sys.version.split()[0],
        "machine": host.machine(),
        "cpus": os.cpu_count(),
        "httpx": httpx.__version__,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
