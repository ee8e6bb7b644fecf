"""The inbound endpoint's upstream call: aiohttp or httpx, a pooled or a new connection.

One fake OpenAI-wire upstream (:class:`corral.testing.FakeChatUpstream` under uvicorn, its own
process) and this process as the client, on uvloop as Corral's server runs. Four variants of
the same non-streaming ``POST /v1/chat/completions`` (the body of ``model_gateway.py``), each
``--calls`` sequential calls per slice, ``--rounds`` slices alternated: ``aiohttp`` with one
pooled ``ClientSession`` (what the endpoint's ``WireChat`` does),
``httpx.AsyncClient`` pooled, and each with a new connection per call. Printed: this process's
CPU time per call (``time.process_time``) per slice, and the p50 latency over all slices.

Run: ``python benchmarks/upstream_client.py [--calls 300] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).parent))
import model_gateway as mg  # the sibling benchmark: its upstream, its body


async def main(args: argparse.Namespace) -> None:
    port = mg._free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, mg.__file__, "--upstream", str(port)]
    )
    body = json.dumps(mg.BODY).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    pooled = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=0), headers=headers
    )
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), headers=headers)
    hx_pooled = httpx.AsyncClient(headers=headers, timeout=60)
    hx_fresh = httpx.AsyncClient(
        headers=headers, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
    )

    async def with_aiohttp(session: aiohttp.ClientSession) -> None:
        async with session.post(url, data=body) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"aiohttp: HTTP {response.status}")

    async def with_httpx(client: httpx.AsyncClient) -> None:
        response = await client.post(url, content=body)
        if response.status_code != 200:
            raise SystemExit(f"httpx: HTTP {response.status_code}")

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "aiohttp, pooled connection": lambda: with_aiohttp(pooled),
        "httpx, pooled connection": lambda: with_httpx(hx_pooled),
        "aiohttp, new connection per call": lambda: with_aiohttp(fresh),
        "httpx, new connection per call": lambda: with_httpx(hx_fresh),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    try:
        await mg._wait_ready(f"http://127.0.0.1:{port}/", child)
        for call in variants.values():  # warm-up: connections, pools
            for _ in range(30):
                await call()
        for _ in range(args.rounds):
            for name, call in variants.items():
                start_cpu = time.process_time()
                for _ in range(args.calls):
                    start = time.perf_counter()
                    await call()
                    latencies[name].append(time.perf_counter() - start)
                cpu[name].append((time.process_time() - start_cpu) / args.calls * 1000)
    finally:
        for session in (pooled, fresh):
            await session.close()
        for client in (hx_pooled, hx_fresh):
            await client.aclose()
        child.terminate()
        child.wait(timeout=30)
    print(
        f"upstream client, {args.calls} calls x {args.rounds} slices, load {os.getloadavg()[0]:.1f}"
    )
    for name in variants:
        slices = " ".join(f"{value:.3f}" for value in cpu[name])
        p50 = statistics.median(latencies[name]) * 1000
        print(f"{name:34} CPU ms/call {slices}   p50 ms {p50:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(arguments))
    except ImportError:
        asyncio.run(main(arguments))
