"""The model gateway's inbound endpoint: latency ``/v1/chat/completions`` adds over its upstream.

Three processes on 127.0.0.1: a fake OpenAI-wire upstream (:class:`corral.testing.FakeChatUpstream`
served by uvicorn, one worker), a Corral server (uvicorn, one worker, no run worker; SQLite in a
temp home, or PostgreSQL with ``--store URL`` in a fresh schema dropped at the end) whose
``openai`` provider points at that upstream, and this client. Corral runs **out of process**,
like a real deployment: its CPU is not charged to the client and it shares no GIL with it.

Variants, each with one keep-alive ``httpx.AsyncClient`` per simulated client and the same body
(two messages, ``max_tokens`` 16):

* ``upstream direct``: ``POST {upstream}/v1/chat/completions``: the floor.
* ``corral /v1/chat/completions``: the same body to Corral with a service account's key (role
  ``builder``): authentication (cached key), model resolution, the ``model.call`` policy
  decision, the tenant's model quotas, the raw-wire upstream call, and one transaction storing
  the decision, the ``model.call`` audit event and the ``chat`` span.
* ``corral, deferred records``: the same on a second Corral server (same store) whose
  ``models.inbound_records`` is ``after_answer``: it answers before the call's rows are
  committed.
* the upstream and the first Corral with ``"stream": true`` (time to the last byte; Corral adds
  ``stream_options.include_usage`` upstream and meters the usage chunk).

Each is measured ``--calls`` times sequentially, then with ``--concurrency`` clients sharing
``--calls`` calls, every variant in ``--rounds`` interleaved slices (a shared machine's changing
load weighs on all alike). Latency is ``time.perf_counter()`` around each request; "added" is
Corral's p50 (p99) minus the direct p50 (p99) of the same mode; server CPU is the Corral
process's user + system time (``/proc``) per call over its slices. Every response is checked
(HTTP 200 and a chat completion, or a stream ending ``data: [DONE]``).

``--profile``: afterwards, ``InboundChat.complete`` alone in this process (same store, same
upstream) under ``cProfile`` for ``--calls`` calls: the top functions by cumulative time.

Anchors measured by others on localhost (from the issue, **not measured here**): Bifrost
0.44 ms, Portkey 2.37 ms, LiteLLM 4.34 ms added per call.

``--profile-server PATH``: the (non-deferred) Corral server process runs under ``cProfile``
and writes a ``pstats`` dump to PATH when it is stopped (read it with ``python -m pstats``);
its CPU figures are then inflated by the profiler.

Run: ``python benchmarks/model_gateway.py [--calls 300] [--concurrency 20] [--rounds 6]
[--store URL] [--profile] [--profile-server PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import io
import json
import os
import platform as pyplatform
import pstats
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

from corral.platform import Platform
from corral.settings import Settings
from corral.tenancy import issue_key

ANCHORS = {"Bifrost": 0.44, "Portkey": 2.37, "LiteLLM": 4.34}
"""Added p50 ms on localhost, measured by others (the issue's anchors)."""

BODY: dict[str, Any] = {
    "model": "openai/bench-model",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}

Request = Callable[[httpx.AsyncClient], Awaitable[None]]
_CLIENTS: list[httpx.AsyncClient] = []


def _settings(
    home: Path, store: str | None, schema: str | None, upstream: str, *, deferred: bool = False
) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "openai": {"base_url": upstream, "api_key": "bench-upstream-key"},
        "models": {"inbound_records": "after_answer" if deferred else "before_answer"},
    }
    if store:
        values["store"] = {"url": store, "postgres_schema": schema}
    return Settings(**values)


def serve_upstream(port: int) -> None:
    """Child process: the fake upstream on ``port`` until killed."""
    import uvicorn

    from corral.testing import FakeChatUpstream

    app = FakeChatUpstream().app
    # The floor stays put whichever event loop Corral's server gets (uvloop when installed).
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="asyncio"
    )


def serve_corral(
    home: Path, port: int, store: str | None, schema: str | None, up: str, *, deferred: bool
) -> None:
    """Child process: Corral on ``port`` until killed (``deferred``: answer before commit)."""
    import uvicorn

    from corral.api import create_app

    platform = Platform(_settings(home, store, schema, up, deferred=deferred))
    app = create_app(platform, run_worker=False)
    dump = os.environ.get("CORRAL_BENCH_PROFILE_SERVER") if not deferred else None
    if dump:
        profiler = cProfile.Profile()

        def write_profile(*_: object) -> None:
            # uvicorn shuts down on SIGTERM, restores this handler, then raises SIGTERM again.
            profiler.disable()
            profiler.dump_stats(dump)
            os._exit(0)

        signal.signal(signal.SIGTERM, write_profile)
        profiler.enable()
    # As `corral up`: uvicorn's "auto" event loop (uvloop when installed) and its HTTP protocol
    # (a tree without `corral.api.http_protocol`, as main before Wave 4: uvicorn's "auto").
    http = getattr(importlib.import_module("corral.api"), "http_protocol", lambda: "auto")()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=http)


def _cpu_seconds_of(pid: int) -> Callable[[], float]:
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
                raise SystemExit(f"a server exited with {child.returncode}")
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not start within 30 s")


def _requests(upstream: str, corral: str, deferred: str, key: str) -> dict[str, Request]:
    content = json.dumps(BODY).encode()
    streamed = json.dumps({**BODY, "stream": True}).encode()
    corral_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    upstream_headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}

    def plain(url: str, headers: dict[str, str]) -> Request:
        async def send(client: httpx.AsyncClient) -> None:
            response = await client.post(url, content=content, headers=headers)
            if response.status_code != 200 or b'"chat.completion"' not in response.content:
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:300]}")

        return send

    def stream(url: str, headers: dict[str, str]) -> Request:
        async def send(client: httpx.AsyncClient) -> None:
            response = await client.post(url, content=streamed, headers=headers)
            if response.status_code != 200 or not response.content.endswith(b"data: [DONE]\n\n"):
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:300]}")

        return send

    return {
        "upstream direct": plain(f"{upstream}/chat/completions", upstream_headers),
        "corral /v1/chat/completions": plain(f"{corral}/v1/chat/completions", corral_headers),
        "corral, deferred records": plain(f"{deferred}/v1/chat/completions", corral_headers),
        "upstream direct, stream": stream(f"{upstream}/chat/completions", upstream_headers),
        "corral, stream": stream(f"{corral}/v1/chat/completions", corral_headers),
    }


def _clients(count: int) -> list[httpx.AsyncClient]:
    """Keep-alive clients made once (making one loads the CA bundle: tens of ms of CPU)."""
    while len(_CLIENTS) < count:
        _CLIENTS.append(httpx.AsyncClient(timeout=60))
    return _CLIENTS[:count]


async def _batch(request: Request, calls: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(calls))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in counter:
            start = time.perf_counter()
            await request(client)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(client) for client in _clients(concurrency)))
    return latencies, time.perf_counter() - start


async def _measure(
    requests: dict[str, Request], cpus: dict[str, Callable[[], float]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for concurrency in dict.fromkeys((1, args.concurrency)):  # ``--concurrency 1``: once
        for request in requests.values():  # warm-up: connections, caches, policy engine
            await _batch(request, 20, concurrency)
        latencies: dict[str, list[float]] = {name: [] for name in requests}
        wall = dict.fromkeys(requests, 0.0)
        server_cpu = dict.fromkeys(requests, 0.0)
        per_round = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):
            for name, request in requests.items():
                cpu = cpus["deferred" if "deferred" in name else "sync"]
                before = cpu()
                found, took = await _batch(request, per_round, concurrency)
                server_cpu[name] += cpu() - before
                latencies[name] += found
                wall[name] += took
        for name in requests:
            ordered = sorted(latencies[name])
            rows.append(
                {
                    "variant": name,
                    "concurrency": concurrency,
                    "calls": len(ordered),
                    "calls_per_second": len(ordered) / wall[name],
                    "p50_ms": statistics.median(ordered) * 1000,
                    "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                    "corral_cpu_ms_per_call": server_cpu[name] / len(ordered) * 1000,
                }
            )
    return rows


async def _issue_key(settings: Settings) -> str:
    admin = Platform(settings)
    await admin.start()  # migrates the store
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


async def _profile(settings: Settings, key: str, calls: int) -> str:
    """``InboundChat.complete`` in this process under cProfile: top 30 cumulative, top 25 self."""
    from corral.costs import InboundCosts
    from corral.gateway.models import InboundChat

    platform = Platform(settings)
    await platform.start()
    chat = InboundChat(
        platform.store,
        platform.models,
        platform.governance,
        platform.tracing,
        quotas=platform.quotas,
        stage=settings.mcp_endpoint.stage,
        costs=InboundCosts(platform.store, platform.quotas),
    )
    principal = await platform.identity.authenticate(f"Bearer {key}")
    body = json.dumps(BODY).encode()
    try:
        for _ in range(20):
            await chat.complete(principal, body)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _ in range(calls):
            await chat.complete(principal, body)
        profiler.disable()
        took = (time.perf_counter() - start) / calls * 1000
    finally:
        await chat.aclose()
        await platform.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(25)
    return f"InboundChat.complete in-process, {calls} calls, {took:.2f} ms/call (profiled)\n" + (
        out.getvalue()
    )


async def _postgres_schema(url: str, create: bool, schema: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        statement = f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA "{schema}" CASCADE'
        await conn.execute(text(statement))
    await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="corral-model-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:10]}" if args.store else None
    if args.store and schema:
        await _postgres_schema(args.store, True, schema)
    up_port, corral_port, deferred_port = _free_port(), _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    corral = f"http://127.0.0.1:{corral_port}"
    deferred = f"http://127.0.0.1:{deferred_port}"
    settings = _settings(home, args.store, schema, upstream)
    key = await _issue_key(settings)
    children = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, __file__, "--upstream", str(up_port)]
        ),
        *(
            subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(home),
                    str(port),
                    args.store or "",
                    schema or "",
                    upstream,
                    mode,
                ]
            )
            for port, mode in ((corral_port, "sync"), (deferred_port, "deferred"))
        ),
    ]
    profile = ""
    try:
        await _wait_ready(f"http://127.0.0.1:{up_port}/", children[0])
        await _wait_ready(f"{corral}/healthz", children[1])
        await _wait_ready(f"{deferred}/healthz", children[2])
        cpu = {
            "sync": _cpu_seconds_of(children[1].pid),
            "deferred": _cpu_seconds_of(children[2].pid),
        }
        rows = await _measure(_requests(upstream, corral, deferred, key), cpu, args)
        if args.profile:
            profile = await _profile(settings, key, args.calls)
    finally:
        for client in _CLIENTS:
            await client.aclose()
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        if args.store and schema:
            await _postgres_schema(args.store, False, schema)
    _print(rows, args)
    if profile:
        print(profile)
    if args.json:
        document = {
            "store": "postgresql" if args.store else "sqlite",
            "python": sys.version.split()[0],
            "machine": pyplatform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "rows": rows,
        }
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(document, indent=2))


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    store = "PostgreSQL" if args.store else "SQLite"
    try:  # what uvicorn's "auto" loop picks in the server
        importlib.import_module("uvloop")
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    print(
        f"/v1/chat/completions over a local fake upstream, {store}, {args.calls} calls per row, "
        f"Corral out of process, {loop} event loop (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'variant':<30} {'clients':>7} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'added p50':>10} {'added p99':>10} {'Corral CPU ms/call':>19}"
    )
    direct = {
        (row["concurrency"], row["variant"].endswith(", stream")): row
        for row in rows
        if row["variant"].startswith("upstream direct")
    }
    for row in rows:
        base = direct[(row["concurrency"], row["variant"].endswith(", stream"))]
        added50 = added99 = "-"
        cpu = "-"
        if row is not base:
            added50 = f"{row['p50_ms'] - base['p50_ms']:.2f}"
            added99 = f"{row['p99_ms'] - base['p99_ms']:.2f}"
            cpu = f"{row['corral_cpu_ms_per_call']:.2f}"
        print(
            f"{row['variant']:<30} {row['concurrency']:>7} {row['calls_per_second']:>8.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {added50:>10} {added99:>10} {cpu:>19}"
        )
    print(
        "Anchors (added p50 on localhost, measured by others, not here): "
        + ", ".join(f"{name} {ms} ms" for name, ms in ANCHORS.items())
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--upstream":
        serve_upstream(int(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _, _, home_arg, port_arg, store_arg, schema_arg, upstream_arg, mode_arg = sys.argv
        serve_corral(
            Path(home_arg),
            int(port_arg),
            store_arg or None,
            schema_arg or None,
            upstream_arg,
            deferred=mode_arg == "deferred",
        )
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved slices per variant")
    parser.add_argument("--store", help="PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--profile", action="store_true", help="cProfile InboundChat.complete")
    parser.add_argument("--json", help="write the rows and the environment here")
    parser.add_argument(
        "--profile-server",
        metavar="PATH",
        help="cProfile the (non-deferred) Corral server process; pstats dump written to PATH",
    )
    arguments = parser.parse_args()
    if arguments.profile_server:  # inherited by the server child
        os.environ["CORRAL_BENCH_PROFILE_SERVER"] = arguments.profile_server
    asyncio.run(main(arguments))
