"""Inbound MCP: ``tools/call`` on Corral's ``/mcp`` over real HTTP, next to ``GET /healthz``.

A Corral server runs in a child process (uvicorn, one worker, no run worker) on SQLite in a temp
home (or PostgreSQL with ``--store URL``, in a fresh schema dropped at the end). The parent
issues a service account's API key (role ``builder``) and measures, in one invocation, with one
``httpx.AsyncClient`` (keep-alive) per simulated client:

* ``GET /healthz``: a public route that reads the store once (no credentials): the floor of
  one HTTP request through Corral's FastAPI app.
* ``/mcp ping``: the MCP path without a tool: Host/Origin check, API-key authentication,
  permission, the SDK's JSON-RPC handling (stateless, JSON responses).
* ``/mcp tools/call bench.echo``: a trivial read-only builtin returning ``"ok"``, through the
  whole governed path: tool resolution (one read), schema validation, policy decision, execution,
  untrusted-output marking, and one transaction storing the decision, the audit event and the
  ``execute_tool`` span. Settings as shipped, except the tool rate limits (600 calls a minute
  per caller), lifted so that they do not refuse the measured calls.

The same ``ping`` and ``tools/call`` are also sent to a second server on the same store whose
endpoint has its fast path off (``McpEndpoint.fast_path = False``: every request through the
SDK's stateless transport, as before the fast path): the baseline, measured in the same run.
``DirectToolCalls.call`` (in-process, in the parent, on the same store) is the governed call
alone, without HTTP, authentication or JSON-RPC: what is left once the transport is cheap.

The same ``ping`` and ``tools/call`` also go to Corral's ASGI application in this process,
without HTTP (``/mcp ..., ASGI in-process``: the request's scope and body handed to the app,
its messages collected): the transport's own CPU (routing, middleware, authentication,
JSON-RPC) next to ``DirectToolCalls.call`` alone, without the sockets and the HTTP parser.

Each is measured ``--calls`` times sequentially (one client), then with ``--concurrency``
clients sharing ``--calls`` calls, every variant in ``--rounds`` slices taken in turn (so that
a shared machine's changing load weighs on all of them alike); latency is
``time.perf_counter()`` around each request (p50/p99), throughput is calls over the summed wall
time of the variant's slices, and server CPU is the CPU time (user + system, ``/proc``) the
serving process used over the variant's slices, per call: on a loaded machine, the figure that
least depends on what else runs. Every response is checked
(HTTP 200, no JSON-RPC error, ``isError`` false). Client and server share the machine's cores:
compare rows of one invocation, not absolute figures across machines.

``--profile-server PATH``: the fast-path server process runs under ``cProfile`` and writes a
``pstats`` dump to PATH when it is stopped (read it with ``python -m pstats``); its CPU figures
are then inflated by the profiler.

Run: ``python benchmarks/mcp_inbound.py [--calls 1000] [--concurrency 20] [--rounds 10]
[--store URL] [--profile-server PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform as pyplatform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from corral.contracts import Tool
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.settings import Settings
from corral.tenancy import issue_key


async def _echo(arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int) -> str:
    return "ok"


ECHO = BuiltinTool(
    contract=Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": "bench.echo", "version": "1.0.0"},
            "spec": {
                "description": "Returns 'ok'.",
                "input_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "additionalProperties": False,
                },
            },
        }
    ),
    run=_echo,
)


def _settings(home: Path, store: str | None, schema: str | None) -> Settings:
    # The shipped per-caller tool rate limit (600/minute) would refuse most calls: lift it.
    unlimited = "1000000/minute"
    values: dict[str, Any] = {
        "home": home,
        "tools": {
            "rate_limit_per_tool": unlimited,
            "rate_limit_per_agent": unlimited,
            "rate_limit_per_tenant": unlimited,
        },
    }
    if store:
        values["store"] = {"url": store, "postgres_schema": schema}
    return Settings(**values)


def serve(home: Path, port: int, store: str | None, schema: str | None, *, fast: bool) -> None:
    """The child process: Corral with ``bench.echo`` on ``port`` until killed."""
    import uvicorn

    from corral.api import create_app
    from corral.api.mcp import McpEndpoint

    app = create_app(
        Platform(_settings(home, store, schema), builtins={"bench.echo": ECHO}), run_worker=False
    )
    for route in app.router.routes:
        endpoint = getattr(route, "app", None)
        if isinstance(endpoint, McpEndpoint):
            endpoint.fast_path = fast
    dump = os.environ.get("CORRAL_BENCH_PROFILE_SERVER") if fast else None
    if dump:
        profiler = cProfile.Profile()

        def write_profile(*_: object) -> None:
            # uvicorn shuts down on SIGTERM, restores this handler, then raises SIGTERM again.
            profiler.disable()
            profiler.dump_stats(dump)
            os._exit(0)

        signal.signal(signal.SIGTERM, write_profile)
        profiler.enable()
    # A client idle longer than uvicorn's 5 s keep-alive (a slow machine, the other variants'
    # slices) could send on a connection the server was closing: "Server disconnected".
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=300,
    )


def _cpu_seconds_of(pid: int) -> Callable[[], float]:
    """CPU time (user + system, seconds) used so far by process ``pid`` (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return read


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_ready(url: str, child: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if child.poll() is not None:
                raise SystemExit(f"the server exited with {child.returncode}")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("the server did not start within 30 s")


Request = Callable[[httpx.AsyncClient, int], Awaitable[None]]


def _requests(url: str, key: str) -> dict[str, Request]:
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
    }

    async def healthz(client: httpx.AsyncClient, _i: int) -> None:
        response = await client.get(f"{url}/healthz")
        assert response.status_code == 200, response.text

    async def ping(client: httpx.AsyncClient, i: int) -> None:
        body = {"jsonrpc": "2.0", "id": i, "method": "ping"}
        response = await client.post(f"{url}/mcp", json=body, headers=headers)
        assert response.status_code == 200 and "result" in response.json(), response.text

    async def call(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "bench.echo", "arguments": {"n": i}},
        }
        response = await client.post(f"{url}/mcp", json=body, headers=headers)
        result = response.json().get("result")
        assert response.status_code == 200 and result and not result["isError"], response.text

    return {"GET /healthz": healthz, "/mcp ping": ping, "/mcp tools/call bench.echo": call}


_CLIENTS: list[httpx.AsyncClient] = []


def _clients(count: int) -> list[httpx.AsyncClient]:
    """``count`` keep-alive clients, made once for the whole run.

    Making one loads the CA bundle (tens of ms of CPU, blocking the loop): made per slice,
    they charged the 20-client rows (the in-process one's CPU above all) with 20 of them.
    """
    while len(_CLIENTS) < count:
        _CLIENTS.append(httpx.AsyncClient(timeout=60))
    return _CLIENTS[:count]


async def _batch(request: Request, calls: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies (seconds) of ``calls`` requests from ``concurrency`` clients, and wall time."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            await request(client, i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(client) for client in _clients(concurrency)))
    wall = time.perf_counter() - start
    return latencies, wall


def _row(name: str, concurrency: int, latencies: list[float], wall: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "variant": name,
        "calls": len(ordered),
        "concurrency": concurrency,
        "calls_per_second": len(ordered) / wall,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def _baseline_requests(url: str, key: str) -> dict[str, Request]:
    requests = _requests(url, key)
    return {
        "/mcp ping, SDK transport": requests["/mcp ping"],
        "/mcp tools/call, SDK transport": requests["/mcp tools/call bench.echo"],
    }


async def _direct_requests(settings: Settings, key: str) -> tuple[Platform, dict[str, Request]]:
    """``DirectToolCalls.call`` in this process, on the benchmark's store."""
    from corral.api.mcp import McpEndpoint

    platform = Platform(settings, builtins={"bench.echo": ECHO})
    await platform.start()
    calls = McpEndpoint(platform).calls
    principal = await platform.identity.authenticate(f"Bearer {key}")

    async def direct(_client: httpx.AsyncClient, i: int) -> None:
        result = await calls.call(principal, "bench.echo", {"n": i})
        assert not result.is_error, result.text

    return platform, {"DirectToolCalls.call, in-process": direct}


async def _asgi_requests(
    settings: Settings, key: str, stack: contextlib.AsyncExitStack
) -> dict[str, Request]:
    """``ping`` and ``tools/call`` handed to Corral's ASGI app in this process (no HTTP)."""
    from corral.api import create_app

    app = create_app(Platform(settings, builtins={"bench.echo": ECHO}), run_worker=False)
    await stack.enter_async_context(app.router.lifespan_context(app))
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"mcp-protocol-version", b"2025-11-25"),
    ]

    async def post(body: dict[str, Any]) -> dict[str, Any]:
        raw = json.dumps(body).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "headers": [*headers, (b"content-length", str(len(raw)).encode())],
            "state": {},
        }
        messages: list[dict[str, Any]] = [{"type": "http.request", "body": raw}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent
        return dict(json.loads(b"".join(m.get("body", b"") for m in sent[1:])))

    async def ping(_client: httpx.AsyncClient, i: int) -> None:
        assert "result" in await post({"jsonrpc": "2.0", "id": i, "method": "ping"})

    async def call(_client: httpx.AsyncClient, i: int) -> None:
        params = {"name": "bench.echo", "arguments": {"n": i}}
        reply = await post({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params})
        assert reply["result"] and not reply["result"]["isError"], reply

    return {"/mcp ping, ASGI in-process": ping, "/mcp tools/call, ASGI in-process": call}


Variant = tuple[Request, Callable[[], float]]
"""A request and the CPU clock (seconds) of the process that serves it."""


async def _measure(
    variants: dict[str, Variant], calls: int, concurrency: int, rounds: int
) -> list[dict[str, Any]]:
    """Each variant ``calls`` times, in ``rounds`` interleaved slices (a shared machine's load
    then weighs on every variant alike)."""
    _clients(concurrency)
    for request, _cpu in variants.values():  # warm-up: caches, connections, validators
        await _batch(request, 50, 1)
    rows = []
    for clients in (1, concurrency):
        latencies: dict[str, list[float]] = {name: [] for name in variants}
        walls = dict.fromkeys(variants, 0.0)
        cpus = dict.fromkeys(variants, 0.0)
        for _ in range(rounds):
            for name, (request, cpu) in variants.items():
                before = cpu()
                measured, wall = await _batch(request, max(1, calls // rounds), clients)
                cpus[name] += cpu() - before
                latencies[name] += measured
                walls[name] += wall
        for name in variants:
            row = _row(name, clients, latencies[name], walls[name])
            row["server_cpu_ms_per_call"] = cpus[name] / row["calls"] * 1000
            rows.append(row)
    return rows


async def _issue_key(settings: Settings) -> str:
    admin = Platform(settings)
    await admin.start()
    try:
        return await issue_key(
            admin.store,
            server_secret=admin.identity.server_secret,
            tenant_id="default",
            principal="service:bench",
            roles=["builder"],
            name="bench",
            kind="service",
        )
    finally:
        await admin.close()


async def _postgres_schema(url: str, create: bool, schema: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        statement = f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA "{schema}" CASCADE'
        await conn.execute(text(statement))
    await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="corral-mcp-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:10]}" if args.store else None
    if args.store and schema:
        await _postgres_schema(args.store, True, schema)
    settings = _settings(home, args.store, schema)
    key = await _issue_key(settings)  # migrates the store first
    ports = {"fast": _free_port(), "sdk": _free_port()}
    serve_args = [args.store or "", schema or ""]
    children = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, __file__, "--serve", str(home), str(port), *serve_args, mode]
        )
        for mode, port in ports.items()
    ]
    direct, direct_requests = await _direct_requests(settings, key)
    stack = contextlib.AsyncExitStack()
    try:
        asgi_requests = await _asgi_requests(settings, key, stack)
        url, baseline = (f"http://127.0.0.1:{port}" for port in ports.values())
        for child, served in zip(children, (url, baseline), strict=True):
            await _wait_ready(served, child)
        fast_cpu, sdk_cpu = (_cpu_seconds_of(child.pid) for child in children)
        variants: dict[str, Variant] = {
            **{name: (r, fast_cpu) for name, r in _requests(url, key).items()},
            **{name: (r, sdk_cpu) for name, r in _baseline_requests(baseline, key).items()},
            # In this process: its CPU clock also counts the benchmark's own loop (small).
            **{name: (r, time.process_time) for name, r in direct_requests.items()},
            **{name: (r, time.process_time) for name, r in asgi_requests.items()},
        }
        rows = await _measure(variants, args.calls, args.concurrency, args.rounds)
    finally:
        for client in _CLIENTS:
            await client.aclose()
        await stack.aclose()
        await direct.close()
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        if args.store and schema:
            await _postgres_schema(args.store, False, schema)
    _print(rows, args)
    if args.json:
        document = {
            "store": "postgresql" if args.store else "sqlite",
            "python": sys.version.split()[0],
            "machine": pyplatform.platform(),
            "cpus": os.cpu_count(),
            "rows": rows,
        }
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(document, indent=2))


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    store = "PostgreSQL" if args.store else "SQLite"
    print(f"Inbound MCP over HTTP, {store}, {args.calls} calls per row")
    print(
        f"{'variant':<34} {'clients':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server CPU ms/call':>18}"
    )
    for row in rows:
        print(
            f"{row['variant']:<34} {row['concurrency']:>7} {row['calls_per_second']:>9.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['server_cpu_ms_per_call']:>18.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _, _, home_arg, port_arg, store_arg, schema_arg, mode_arg = sys.argv
        serve(
            Path(home_arg),
            int(port_arg),
            store_arg or None,
            schema_arg or None,
            fast=mode_arg == "fast",
        )
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved slices per variant")
    parser.add_argument("--store", help="PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--json", help="write the rows and the environment here")
    parser.add_argument(
        "--profile-server",
        metavar="PATH",
        help="cProfile the fast-path server process; pstats dump written to PATH",
    )
    arguments = parser.parse_args()
    if arguments.profile_server:  # inherited by the server child
        os.environ["CORRAL_BENCH_PROFILE_SERVER"] = arguments.profile_server
    asyncio.run(main(arguments))
