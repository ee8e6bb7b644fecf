"""Latency the tool gateway adds to an ``mcp`` tool call, next to calling the upstream directly.

One process measures both paths against the same upstream program,
``corral.testing.mcp_echo_server`` over stdio (each path has its own server process):

* ``direct sdk``: ``mcp.Client.call_tool("echo", {"text": "hi"})`` on one open session (the
  floor: what any MCP client pays for the call itself).
* ``pool``: ``McpPool.call_tool`` (Corral's pooled session; the SDK call plus the session
  lookup).
* ``executor``: ``McpExecutor.call``: the pool plus the pin check (cached), the live listing's
  digest check and result rendering: the MCP-specific part of the gateway.
* ``gateway``: a managed run's read-only tool call end to end, minus the store writes of the
  step: the ``execute_tool`` span, ``ToolGateway.prepare`` (resolve, JSON Schema validation),
  the ``tool.call`` policy decision with the default policies (Cedar), then
  ``ToolGateway.execute``: rate limits, circuit breaker and retry wrapper, the secret scope,
  the MCP executor (the pin and the server document read from the store, the live listing's
  digest check), the pooled session's ``tools/call``, result rendering, redaction and the cap.

Sequential: ``--calls`` calls per path, interleaved one by one. Concurrent: ``--clients`` tasks
sharing the path's one session, ``--calls`` calls in all per path. p50/p99 in milliseconds.

Run: ``python benchmarks/mcp_gateway.py [--calls 1000] [--clients 20] [--store-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mcp import Client, StdioServerParameters

from corral.contracts import Agent, AgentTools, parse_document
from corral.gateway.mcp import sync_server
from corral.gateway.tools import ToolCallContext
from corral.gateway.tools._gateway import PreparedCall, ResolvedTool
from corral.observability import Tracing, new_trace_id
from corral.platform import Platform
from corral.policy import EntityRef, PolicyContext, PolicyRequest
from corral.policy._service import agent_entity, tool_entity
from corral.registry import apply_documents
from corral.settings import Settings, ToolSettings

TENANT = "default"
UNLIMITED = "100000000/minute"
ECHO = StdioServerParameters(command=sys.executable, args=["-m", "corral.testing.mcp_echo_server"])
SERVER = {
    "apiVersion": "corral.dev/v1",
    "kind": "McpServer",
    "metadata": {"name": "echo"},
    "spec": {
        "description": "Benchmark upstream.",
        "transport": "stdio",
        "command": ECHO.command,
        "args": ECHO.args,
    },
}
AGENT = Agent.model_validate(
    {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": "bench-agent"},
        "spec": {
            "description": "Benchmark agent.",
            "owner": "bench",
            "instructions": "Echo.",
            "tools": {"allowed": ["echo.*"]},
        },
    }
)


async def gateway_path(
    platform: Platform,
) -> tuple[Callable[[], Awaitable[None]], ToolCallContext, ResolvedTool]:
    async with platform.store.transaction(TENANT) as session:
        await apply_documents(session, [parse_document(SERVER)], tenant_id=TENANT, actor="bench")
    await sync_server(platform.store, platform.mcp, "echo", tenant_id=TENANT, actor="bench")
    async with platform.store.read(TENANT) as session:
        from sqlalchemy import select

        from corral.registry._tables import ToolRow, ToolVersionRow

        document = (
            await session.execute(
                select(ToolVersionRow.document)
                .join(ToolRow, ToolRow.id == ToolVersionRow.tool_id)
                .where(
                    ToolRow.name == "echo.echo", ToolVersionRow.version == ToolRow.latest_version
                )
            )
        ).scalar_one()
    tool = ResolvedTool.from_document(dict(document))
    tools = {tool.name: tool}
    entities = [agent_entity("bench-agent", TENANT, AGENT.spec), tool_entity(tool, TENANT)]
    ctx = ToolCallContext(
        TENANT,
        "run_bench",
        0,
        0,
        None,
        frozenset(tools),
        principal="agent:bench-agent",
        principal_entity=entities[0],
        stage="dev",
    )
    gateway, governance, trace_id = platform.tools, platform.governance, new_trace_id()
    agent_tools = AgentTools(allowed=["echo.*"])

    async def call() -> None:
        with Tracing.trace(trace_id), gateway.span(ctx, "echo.echo", "c") as record:
            prepared = gateway.prepare(
                ctx, tools, "echo.echo", {"text": "hi"}, agent_tools=agent_tools
            )
            assert isinstance(prepared, PreparedCall)
            request = PolicyRequest(
                principal=EntityRef("Agent", "bench-agent"),
                action="tool.call",
                resource=EntityRef("Tool", "echo.echo"),
                context=PolicyContext(
                    tenant=TENANT, stage="dev", requester="user:bench", arguments=prepared.arguments
                ),
            )
            decision = await governance.decide(TENANT, request, entities)
            assert decision.decision == "allow", decision
            result = await gateway.execute(ctx, prepared)
            record(result)
        assert result.status == "COMPLETED" and result.output == "hi", result
        platform.tracing.exporter.discard(trace_id)

    return call, ctx, tool


def percentile_ms(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] / 1e6


CPU_NS: dict[str, int] = {}
"""CPU time of this process's event-loop thread per path (the upstream runs elsewhere)."""


async def sequential(
    paths: dict[str, Callable[[], Awaitable[None]]], calls: int
) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in paths}
    CPU_NS.clear()
    for _ in range(calls):
        for name, call in paths.items():
            cpu = time.thread_time_ns()
            started = time.perf_counter_ns()
            await call()
            samples[name].append(time.perf_counter_ns() - started)
            CPU_NS[name] = CPU_NS.get(name, 0) + time.thread_time_ns() - cpu
    return samples


async def concurrent(
    paths: dict[str, Callable[[], Awaitable[None]]], calls: int, clients: int
) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in paths}

    async def client(call: Callable[[], Awaitable[None]], into: list[int]) -> None:
        for _ in range(calls // clients):
            started = time.perf_counter_ns()
            await call()
            into.append(time.perf_counter_ns() - started)

    CPU_NS.clear()
    for name, call in paths.items():
        cpu = time.thread_time_ns()
        await asyncio.gather(*(client(call, samples[name]) for _ in range(clients)))
        CPU_NS[name] = time.thread_time_ns() - cpu
    return samples


def report(title: str, samples: dict[str, list[int]]) -> None:
    direct = samples["direct sdk"]
    d50, d99 = percentile_ms(direct, 0.5), percentile_ms(direct, 0.99)
    print(f"\n{title}")
    d_cpu = CPU_NS["direct sdk"] / len(direct) / 1000
    print(
        f"{'path':<12} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
        f"{'CPU us':>7} {'+CPU us':>7}"
    )
    for name, values in samples.items():
        p50, p99 = percentile_ms(values, 0.5), percentile_ms(values, 0.99)
        cpu = CPU_NS[name] / len(values) / 1000
        print(
            f"{name:<12} {len(values):>6} {p50:>8.3f} {p99:>8.3f} {p50 - d50:>8.3f} "
            f"{p99 - d99:>8.3f} {cpu:>7.0f} {cpu - d_cpu:>7.0f}"
        )


async def measure(args: argparse.Namespace, home: Path) -> None:
    tools = ToolSettings(
        rate_limit_per_tool=UNLIMITED,
        rate_limit_per_agent=UNLIMITED,
        rate_limit_per_tenant=UNLIMITED,
    )
    store = {"url": args.store_url} if args.store_url else {}
    platform = Platform(Settings(home=home, tools=tools, store=store))
    await platform.start()
    try:
        gateway, ctx, tool = await gateway_path(platform)
        executor = platform.tools.mcp
        assert executor is not None
        await gateway()  # the executor caches the server document it reads
        spec = next(iter(executor._servers.values())).spec
        async with Client(ECHO, cache=None) as client:

            async def direct() -> None:
                result = await client.call_tool("echo", {"text": "hi"})
                assert not result.is_error

            async def pool() -> None:
                result = await platform.mcp.call_tool(TENANT, "echo", spec, "echo", {"text": "hi"})
                assert not result.is_error

            async def execute() -> None:
                assert await executor.call(ctx, tool, {"text": "hi"}) == "hi"

            paths = {"direct sdk": direct, "pool": pool, "executor": execute, "gateway": gateway}
            await sequential(paths, args.warmup)
            report(f"Sequential: {args.calls} calls per path", await sequential(paths, args.calls))
            report(
                f"Concurrent: {args.clients} clients, {args.calls} calls per path",
                await concurrent(paths, args.calls, args.clients),
            )
    finally:
        await platform.close()
    print(f"\nstore {platform.store.dialect}; upstream corral.testing.mcp_echo_server (stdio)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--store-url", default=None, help="default: SQLite in a temp home")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ.pop("CORRAL_STORE__URL", None)
        asyncio.run(measure(args, Path(home)))


if __name__ == "__main__":
    main()
