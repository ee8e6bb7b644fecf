"""Workers on PostgreSQL under load and database faults: do all runs finish, within the pools?

Several workers (each a Platform with its own store and pool, as separate processes would
have) drive ``--runs`` runs at ``--concurrency`` each, with the shipped pool settings. While
they work, the database drops every connection of the workers' role ``--faults`` times
(``pg_terminate_backend``), and once refuses the role for ``--outage-seconds``
(``CONNECTION LIMIT 0``). Reported: how the runs ended, how long it took, the most connections
the pools held open (sampled), and how often workers backed off or handed a run back.

    python benchmarks/workers_postgres.py --url postgresql+asyncpg://postgres@127.0.0.1:5432/test

The URL must be a superuser's (the script creates a role and a schema, and drops both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from corral.contracts import parse_document
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.testing import ScriptedModel

AGENT = {
    "apiVersion": "corral.dev/v1",
    "kind": "Agent",
    "metadata": {"name": "bench-agent"},
    "spec": {
        "description": "Answers after a few model calls.",
        "owner": "bench",
        "instructions": "Answer.",
        "model": {"default": "scripted/test"},
        "tools": {"allowed": []},
    },
}


class Counts(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for key, fragment in (
            ("claim_backoffs", "claiming runs failed"),
            ("runs_handed_back", "hit a transient store error"),
            ("hand_backs_failed", "handing back run"),
            ("failures_unrecorded", "recording the failure"),
            ("heartbeat_errors", "heartbeat failed"),
        ):
            if fragment in message:
                self.counts[key] += 1


async def superuser(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def main_async(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:10]
    role, schema = f"corral_bench_{suffix}", f"bench_{suffix}"
    await superuser(
        args.url,
        f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS",
        f"CREATE SCHEMA {schema} AUTHORIZATION {role}",
    )
    url = str(make_url(args.url).set(username=role, password=None))
    settings = Settings(
        home=home,
        store={"url": url, "postgres_schema": schema, "processes": args.workers + 1},
        runtime={"worker_concurrency": args.concurrency, "lease_seconds": args.lease_seconds},
    )
    counts = Counts()
    logging.getLogger("corral.runtime._worker").addHandler(counts)
    logging.getLogger("corral.runtime._worker").propagate = False

    async def decide(request: ModelRequest) -> FinalAnswer:
        await asyncio.sleep(args.model_seconds)
        return FinalAnswer("done")

    platforms: list[Platform] = []
    try:
        control = Platform(settings)
        await control.start()
        platforms.append(control)
        async with control.store.transaction("default") as session:
            await apply_documents(
                session, [parse_document(AGENT)], tenant_id="default", actor="user:bench"
            )
        for _ in range(args.workers):
            worker = Platform(settings, providers={"scripted": ScriptedModel(decide)})
            await worker.start()
            platforms.append(worker)
        began = time.monotonic()
        async with control.store.transaction("default") as session:
            for n in range(args.runs):
                await create_run(
                    session,
                    tenant_id="default",
                    agent_name="bench-agent",
                    task=f"run {n}",
                    requested_by="user:bench",
                )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.worker.run(stop)) for p in platforms[1:]]
        peak, peak_total = [0] * args.workers, 0
        faults_done, outage_done = 0, False
        statuses: dict[str, int] = {}
        terminate = (
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        )
        while time.monotonic() - began < args.deadline_seconds:
            await asyncio.sleep(0.2)
            opened = [_open_connections(p) for p in platforms[1:]]
            peak = [max(a, b) for a, b in zip(peak, opened, strict=True)]
            peak_total = max(peak_total, sum(opened))
            elapsed = time.monotonic() - began
            if faults_done < args.faults and elapsed >= args.fault_every_seconds * (
                faults_done + 1
            ):
                faults_done += 1
                await superuser(args.url, terminate)
            elif faults_done == args.faults and args.outage_seconds and not outage_done:
                outage_done = True
                await superuser(args.url, f"ALTER ROLE {role} CONNECTION LIMIT 0", terminate)
                await asyncio.sleep(args.outage_seconds)
                await superuser(args.url, f"ALTER ROLE {role} CONNECTION LIMIT -1")
            try:
                async with control.store.read("default") as session:
                    rows = await session.execute(
                        select(RunRow.status, func.count()).group_by(RunRow.status)
                    )
                    statuses = {status: int(n) for status, n in rows}
            except Exception:  # the control plane's connections were dropped too
                continue
            if statuses.get("SUCCEEDED", 0) + statuses.get("FAILED", 0) >= args.runs:
                break
        wall = time.monotonic() - began
        stop.set()
        await asyncio.gather(*tasks)
        workers_alive_at_end = sum(1 for t in tasks if t.exception() is None)
        return {
            "runs": args.runs,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "pool_per_process": settings.store.pool_size + settings.store.max_overflow,
            "statuses": statuses,
            "wall_seconds": round(wall, 1),
            "peak_open_connections_per_worker": peak,
            "peak_open_connections_all_workers": peak_total,
            "connection_drops": faults_done,
            "outage_seconds": args.outage_seconds if outage_done else 0,
            "workers_alive_at_end": workers_alive_at_end,
            **counts.counts,
        }
    finally:
        for platform in platforms:
            await platform.close()
        await superuser(
            args.url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"DROP SCHEMA {schema} CASCADE",
            f"DROP ROLE {role}",
        )


def _open_connections(platform: Platform) -> int:
    pool: Any = platform.store.engine.pool
    return int(pool.checkedin() + pool.checkedout())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "CORRAL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model-seconds", type=float, default=0.05)
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument("--faults", type=int, default=2, help="times every connection is dropped")
    parser.add_argument("--fault-every-seconds", type=float, default=2.0)
    parser.add_argument("--outage-seconds", type=float, default=2.0)
    parser.add_argument("--deadline-seconds", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        report = asyncio.run(main_async(args, Path(home)))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
