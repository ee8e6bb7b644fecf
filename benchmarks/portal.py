"""Portal page render time with 10,000 runs in the store (issue 13, "Measure": p50 <= 150 ms).

One process, one app (``corral.api.create_app``, SQLite in a temp home, no worker). The store is
seeded with bulk inserts: ``--runs`` runs (default 10,000) over the last 14 days in a mix of
statuses, one tool call and one model call (the cost ledger) per run. A user logs in through the
login form; then ``GET /ui`` (the overview) and ``GET /ui/runs`` (the run list's first page)
are requested round-robin ``--requests`` times each, after a warm-up, through
``httpx.ASGITransport``: the whole ASGI stack (session re-check, queries, template rendering,
security headers) without sockets. Latency is ``time.perf_counter()`` around each request; CPU
is ``time.process_time()`` around it (the whole process: on a loaded shared machine the wall
time grows with the load, the CPU time much less).

Run: ``python benchmarks/portal.py [--runs 10000] [--requests 50] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from corral.api import create_app
from corral.contracts import parse_document
from corral.costs import ModelCallRow
from corral.platform import Platform
from corral.registry import apply_documents, get_agent, get_agent_version
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import Settings
from corral.store import new_id, utcnow
from corral.tenancy import ROLES, issue_key

STATUSES = ["SUCCEEDED"] * 14 + ["FAILED", "CANCELLED", "RUNNING", "AWAITING_APPROVAL"]
AGENTS = [f"agent-{i}" for i in range(8)]


def _agent(name: str) -> Any:
    return parse_document(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Agent",
            "metadata": {"name": name},
            "spec": {
                "description": "Benchmark agent.",
                "owner": "bench",
                "instructions": "Answer.",
                "model": {"default": "scripted/test"},
            },
        }
    )


async def _seed(platform: Platform, runs: int) -> None:
    async with platform.store.transaction("default") as session:
        await apply_documents(
            session, [_agent(n) for n in AGENTS], tenant_id="default", actor="user:bench"
        )
        agents = [await get_agent(session, n, tenant_id="default") for n in AGENTS]
        versions = [
            (await get_agent_version(session, a.name, a.latest_version, tenant_id="default"))[1]
            for a in agents
        ]
    now = utcnow()
    run_rows, call_rows, cost_rows = [], [], []
    for i in range(runs):
        agent, version = agents[i % len(agents)], versions[i % len(agents)]
        status = STATUSES[i % len(STATUSES)]
        created = now - timedelta(seconds=i * 14 * 86400 // runs)
        finished = created + timedelta(seconds=1 + i % 30) if status != "RUNNING" else None
        run_id = new_id("run")
        run_rows.append(
            {
                "id": run_id,
                "tenant_id": "default",
                "agent_id": agent.id,
                "agent_name": agent.name,
                "agent_version_id": version.id,
                "agent_version": agent.latest_version,
                "stage": "dev",
                "status": status,
                "task": f"task {i}",
                "requested_by": "user:bench",
                "model": "scripted/test",
                "trace_id": f"{i:032x}",
                "step_count": 2,
                "input_tokens": 100,
                "output_tokens": 20,
                "cost_usd": Decimal("0.0012"),
                "created_at": created,
                "started_at": created,
                "finished_at": finished,
                "updated_at": finished or created,
            }
        )
        call_rows.append(
            {
                "id": new_id("tc"),
                "tenant_id": "default",
                "run_id": run_id,
                "step_index": 0,
                "call_index": 0,
                "idempotency_key": f"{run_id}:0:0",
                "tool_name": f"fs.tool_{i % 5}",
                "arguments": {"path": "README.md"},
                "status": "COMPLETED",
                "started_at": created,
                "finished_at": created,
            }
        )
        cost_rows.append(
            {
                "id": new_id("mc"),
                "tenant_id": "default",
                "run_id": run_id,
                "agent": agent.name,
                "alias": "scripted/test",
                "deployment": "scripted/test",
                "provider": "scripted",
                "model": "test",
                "input_tokens": 100,
                "output_tokens": 20,
                "cost_usd": Decimal("0.0012"),
                "created_at": created,
            }
        )
    async with platform.store.transaction("default") as session:
        for table, rows in (
            (RunRow, run_rows),
            (ToolCallRow, call_rows),
            (ModelCallRow, cost_rows),
        ):
            for start in range(0, len(rows), 2000):
                await session.execute(insert(table), rows[start : start + 2000])


async def _login(client: httpx.AsyncClient, key: str) -> None:
    form = await client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    done = await client.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1)})
    assert done.status_code == 303, done.text


async def main(runs: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        platform = Platform(Settings(home=Path(home)))
        app = create_app(platform, run_worker=False)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        try:
            began = time.perf_counter()
            await _seed(platform, runs)
            seeded_s = time.perf_counter() - began
            key = await issue_key(
                platform.store,
                server_secret=platform.identity.server_secret,
                tenant_id="default",
                principal="user:bench",
                roles=list(ROLES),
                name="bench",
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
                await _login(client, key)
                pages = {"overview": "/ui", "runs": "/ui/runs"}
                timings: dict[str, list[float]] = {name: [] for name in pages}
                cpu: dict[str, list[float]] = {name: [] for name in pages}
                for round_ in range(requests + 5):
                    for name, path in pages.items():
                        started, started_cpu = time.perf_counter(), time.process_time()
                        response = await client.get(path)
                        elapsed_ms = (time.perf_counter() - started) * 1000
                        cpu_ms = (time.process_time() - started_cpu) * 1000
                        assert response.status_code == 200, response.text[:500]
                        if round_ >= 5:  # warm-up
                            timings[name].append(elapsed_ms)
                            cpu[name].append(cpu_ms)
        finally:
            await lifespan.__aexit__(None, None, None)
    result: dict[str, Any] = {"runs_seeded": runs, "requests": requests, "seed_seconds": seeded_s}
    for name, values in timings.items():
        ordered = sorted(values)
        result[name] = {
            "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
            "cpu_p50_ms": round(statistics.median(cpu[name]), 1),
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    found = asyncio.run(main(args.runs, args.requests))
    print(json.dumps(found, indent=2))
    for page in ("overview", "runs"):
        verdict = "ok" if found[page]["p50_ms"] <= 150 else "OVER the 150 ms target"
        print(
            f"{page}: p50 {found[page]['p50_ms']} ms ({verdict}); "
            f"CPU p50 {found[page]['cpu_p50_ms']} ms (the process, aiosqlite threads included)"
        )
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
