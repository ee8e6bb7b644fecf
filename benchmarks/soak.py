"""Soak: mixed load against a real Corral for a while; RSS over time, stuck runs, DB growth.

A Corral server (API and its worker in one process, like ``corral up`` without the local model)
runs in a child process on SQLite in a temp home (or PostgreSQL with ``--postgres URL``, in a
fresh schema dropped at the end). The model is :class:`corral.testing.ScriptedModel`; the tools
are two builtins: ``soak.echo`` (read-only) and ``soak.write`` (``side_effect: write``; a policy
of the soak holds every call of it for an approver). ``--clients`` client loops then, for
``--seconds``, each pick one operation at a time (seeded, ``--seed``):

* **read run**: ``POST /v1/agents/soak-reader/runs`` (1-4 calls of ``soak.echo``, then an answer),
  then ``GET /v1/runs/{id}`` until it ended (read and write runs are a closed loop);
* **write run**: ``POST /v1/agents/soak-writer/runs``; the run pauses ``AWAITING_APPROVAL`` and
  an approver loop approves (3 in 4) or rejects (1 in 4) it through ``/v1/approvals``;
* **cancel**: a run of ``soak-slow`` (0.3 s per model call, up to 40 steps) cancelled through
  ``POST /v1/runs/{id}/cancel`` 0.1-1.5 s later;
* **inbound MCP**: ``tools/call soak.echo`` on ``/mcp`` (JSON-RPC over HTTP).

The server's resident set size (``VmRSS`` of ``/proc/PID/status``) and the database's size
(SQLite: the file with its ``-wal``; PostgreSQL: ``pg_total_relation_size`` over the schema's
tables) are sampled every ``--sample-seconds``. After the load, the approver goes on deciding
and every run gets ``--drain-seconds`` to end; a run still not terminal then is **stuck**.
Every response is checked (status code, and every run's end: read runs succeed, write runs
succeed or are rejected as voted, cancelled runs end ``CANCELLED`` or had already finished);
anything else, and any traceback in the server's log, is an **error**.

RSS growth compares the mean of the samples in the last ``--window-seconds`` of the load with
the mean of the first window after ``--warmup-seconds``. Exit status 1 if a run is stuck, an
error occurred, or (unless ``--no-rss-check``) RSS grew by 10 % or more.

Run: ``python benchmarks/soak.py [--seconds 600] [--clients 8] [--postgres URL] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.contracts import Tool, parse_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import TERMINAL_STATUSES
from corral.settings import Settings
from corral.tenancy import issue_key
from corral.testing import ScriptedModel

RSS_LIMIT = 0.10
"""RSS growth after warm-up at or above which the soak fails (10 %)."""
SLOW_MODEL_SECONDS = 0.3
"""Seconds each model call of a ``soak-slow`` run takes (so a cancel finds it running)."""
REQUESTER = "user:soak-requester"
APPROVER = "user:soak-approver"
MCP_CALLER = "service:soak-mcp"


# --- the served world: tools, model, agents -------------------------------------------------------


def _tool(name: str, side_effect: str) -> Tool:
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "version": "1.0.0"},
            "spec": {
                "description": f"Soak tool {name} ({side_effect}).",
                "side_effect": side_effect,
                "input_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        }
    )


async def _echo(arguments: dict[str, Any], workspace: Path | None, **_: Any) -> str:
    return f"echo {arguments['n']}"


async def _write(arguments: dict[str, Any], workspace: Path | None, **_: Any) -> str:
    return f"wrote {arguments['n']}"


BUILTINS = {
    "soak.echo": BuiltinTool(_tool("soak.echo", "read"), _echo),
    "soak.write": BuiltinTool(_tool("soak.write", "write"), _write),
}


async def decide(request: ModelRequest) -> ToolCall | FinalAnswer:
    """The scripted model: the task says what to do (``read N``, ``write``, ``slow``)."""
    task = request.messages[1].content
    done = sum(1 for m in request.messages if m.role == "tool")
    kind, _, count = task.partition(" ")
    if kind == "slow":
        await asyncio.sleep(SLOW_MODEL_SECONDS)
        wanted = 40
    elif kind == "write":
        wanted = 1
    else:
        wanted = int(count.split()[0])
    if done < wanted:
        tool = "soak.write" if kind == "write" else "soak.echo"
        return ToolCall(f"call_{done}", tool, {"n": done})
    return FinalAnswer(f"{kind} done after {done} calls")


def _agent(name: str, tool: str) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "description": f"Soak agent {name}.",
            "owner": "platform-team",
            "instructions": "Do what the task says.",
            "model": {"default": "scripted/soak"},
            "tools": {"allowed": [tool]},
            "limits": {"max_iterations": 50, "max_tool_calls": 50},
        },
    }


DOCUMENTS: list[dict[str, Any]] = [
    _agent("soak-reader", "soak.echo"),
    _agent("soak-writer", "soak.write"),
    _agent("soak-slow", "soak.echo"),
    {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "soak-write-approval"},
        "spec": {
            "description": "Every soak.write call waits for an approver, in every stage.",
            "cedar": """
@id("soak-write-needs-approval")
@decision("require_approval")
@approver_role("approver")
@reason("The soak approves or rejects every write.")
forbid (principal, action == Action::"tool.call", resource == Tool::"soak.write");
""",
        },
    },
]


def server_settings(home: Path, postgres: str | None, schema: str | None) -> Settings:
    """Settings as shipped, except rate limits lifted (the soak is one caller at high rate)."""
    unlimited = "1000000/minute"
    values: dict[str, Any] = {
        "home": home,
        "tools": {
            "rate_limit_per_tool": unlimited,
            "rate_limit_per_agent": unlimited,
            "rate_limit_per_tenant": unlimited,
        },
        "identity": {"api_rate_limit": unlimited},
        "governance": {"roles": {REQUESTER: ["builder", "operator"], APPROVER: ["approver"]}},
    }
    if postgres:
        values["store"] = {"url": postgres, "postgres_schema": schema}
    return Settings(**values)


def _trace_python_memory(home: Path) -> None:
    """``--tracemalloc``: on each SIGUSR1, compare the Python heap with the first snapshot."""
    import signal
    import tracemalloc

    tracemalloc.start(10)
    first: list[tracemalloc.Snapshot] = []

    def dump(_signum: int, _frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        if not first:
            first.append(snapshot)
            return
        lines = [f"traced Python memory now: {tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB"]
        growth = snapshot.compare_to(first[0], "traceback")
        lines += [str(stat) for stat in growth[:15]]
        for stat in growth[:3]:  # where the three largest growths were allocated from
            lines += ["", str(stat), *stat.traceback.format(limit=10)]
        (home / "tracemalloc.txt").write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, dump)


def serve(home: Path, port: int, postgres: str | None, schema: str | None) -> None:
    """The child process: Corral with its worker on ``port`` until SIGTERM."""
    import uvicorn

    if os.environ.get("CORRAL_SOAK_TRACEMALLOC"):
        _trace_python_memory(home)

    from corral.api import create_app

    settings = server_settings(home, postgres, schema)
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(decide, name="scripted")},
        builtins=BUILTINS,
    )
    uvicorn.run(
        create_app(platform),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        # As `corral up`: idle connections outlive the clients' pool expiry (httpx: 5 s).
        timeout_keep_alive=settings.api.keep_alive_seconds,
    )


# --- the load -------------------------------------------------------------------------------------


@dataclass
class Config:
    """What one soak does (the command line's options)."""

    seconds: float = 600.0
    clients: int = 8
    seed: int = 20261206
    postgres: str | None = None
    sample_seconds: float = 5.0
    warmup_seconds: float | None = None
    """Default: a fifth of ``seconds``, at most 120."""
    window_seconds: float | None = None
    """Default: a tenth of ``seconds``, at least one sample's worth."""
    drain_seconds: float = 120.0
    home: Path | None = None
    tracemalloc: bool = False
    """Trace the server's Python allocations; report the growth from warm-up to the end."""

    @property
    def warmup(self) -> float:
        return (
            self.warmup_seconds if self.warmup_seconds is not None else min(self.seconds / 5, 120)
        )

    @property
    def window(self) -> float:
        if self.window_seconds is not None:
            return self.window_seconds
        return max(self.seconds / 10, self.sample_seconds)


@dataclass
class Report:
    """What the soak measured."""

    store: str
    seconds: float
    operations: dict[str, int] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    votes: dict[str, int] = field(default_factory=dict)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    """``(seconds since the load began, RSS in KiB)``."""
    db_bytes: list[tuple[float, int]] = field(default_factory=list)
    rss_growth: float | None = None
    """Fraction: mean RSS of the last window over the mean of the first window after warm-up."""
    stuck_runs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    drained_in_seconds: float = 0.0

    def failures(self, *, check_rss: bool) -> list[str]:
        """Why the soak failed (empty when it passed)."""
        why = []
        if self.stuck_runs:
            why.append(f"{len(self.stuck_runs)} stuck runs: {self.stuck_runs[:10]}")
        if self.error_count:
            why.append(f"{self.error_count} errors, first: {self.errors[:5]}")
        if check_rss and (self.rss_growth is None or self.rss_growth >= RSS_LIMIT):
            why.append(f"RSS growth {self.rss_growth} >= {RSS_LIMIT} after warm-up")
        return why


@dataclass
class Soak:
    """The state shared by the client loops, the approver and the sampler."""

    config: Config
    url: str
    keys: dict[str, str]
    report: Report
    expected: dict[str, str] = field(default_factory=dict)
    """Run id -> what its end must be: ``read``, ``write``, ``slow``."""
    votes: dict[str, str] = field(default_factory=dict)
    """Run id -> ``approve`` or ``reject`` (write runs)."""
    cancelled: set[str] = field(default_factory=set)
    loading: bool = True
    ops: Counter[str] = field(default_factory=Counter)
    began: float = field(default_factory=time.monotonic)

    def error(self, text: str) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < 50:  # when, to match it with the RSS samples and the log
            self.report.errors.append(f"at {time.monotonic() - self.began:.1f} s: {text[:500]}")

    def headers(self, principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[principal]}"}

    def check(self, response: httpx.Response, *expected: int) -> bool:
        if response.status_code in expected:
            return True
        self.error(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )
        return False

    async def start_run(self, http: httpx.AsyncClient, agent: str, task: str, kind: str) -> str:
        response = await http.post(
            f"{self.url}/v1/agents/{agent}/runs",
            json={"task": task, "stage": "dev"},
            headers=self.headers(REQUESTER),
        )
        if not self.check(response, 201):
            return ""
        run_id: str = response.json()["id"]
        self.expected[run_id] = kind
        return run_id

    async def operation(self, http: httpx.AsyncClient, rng: random.Random, i: int) -> None:
        op = rng.choices(["read", "write", "cancel", "mcp"], weights=[4, 2, 1, 4])[0]
        self.ops[op] += 1
        if op == "read":
            task = f"read {rng.randint(1, 4)} #{i}"
            await self.wait_for(http, await self.start_run(http, "soak-reader", task, "read"))
        elif op == "write":
            run_id = await self.start_run(http, "soak-writer", f"write #{i}", "write")
            await self.wait_for(http, run_id)
        elif op == "cancel":
            run_id = await self.start_run(http, "soak-slow", f"slow #{i}", "slow")
            if run_id:
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                response = await http.post(
                    f"{self.url}/v1/runs/{run_id}/cancel", headers=self.headers(REQUESTER)
                )
                if self.check(response, 200, 409):
                    self.cancelled.add(run_id)
        else:
            await self.mcp_call(http, i)

    async def wait_for(self, http: httpx.AsyncClient, run_id: str) -> None:
        """Poll ``GET /v1/runs/{id}`` until the run ends (or the load stops): a closed loop,
        so the queue stays as long as the clients are many."""
        while run_id and self.loading:
            response = await http.get(
                f"{self.url}/v1/runs/{run_id}", headers=self.headers(REQUESTER)
            )
            if not self.check(response, 200) or response.json()["status"] in TERMINAL_STATUSES:
                return
            await asyncio.sleep(0.1)

    async def mcp_call(self, http: httpx.AsyncClient, i: int) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "soak.echo", "arguments": {"n": i}},
        }
        headers = {
            **self.headers(MCP_CALLER),
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
        }
        response = await http.post(f"{self.url}/mcp", json=body, headers=headers)
        if self.check(response, 200):
            result = response.json().get("result")
            if not result or result.get("isError"):
                self.error(f"/mcp tools/call: {response.text}")

    async def client(self, n: int) -> None:
        rng = random.Random(f"{self.config.seed}:{n}")
        async with httpx.AsyncClient(timeout=60) as http:
            i = 0
            while self.loading:
                try:
                    await self.operation(http, rng, n * 10_000_000 + i)
                except httpx.HTTPError as exc:
                    self.error(f"client {n}: {_request_of(exc)}{exc!r}")
                i += 1

    async def approver(self) -> None:
        rng = random.Random(f"{self.config.seed}:approver")
        async with httpx.AsyncClient(timeout=60) as http:
            while True:
                try:
                    await self._decide_pending(http, rng)
                except httpx.HTTPError as exc:
                    self.error(f"approver: {_request_of(exc)}{exc!r}")
                await asyncio.sleep(0.2)

    async def _decide_pending(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        response = await http.get(
            f"{self.url}/v1/approvals",
            params={"status": "pending", "limit": 200},
            headers=self.headers(APPROVER),
        )
        if not self.check(response, 200):
            return
        for approval in response.json()["items"]:
            how = "approve" if rng.random() < 0.75 else "reject"
            body = {"comment": "soak"} if how == "approve" else {"reason": "soak rejects"}
            voted = await http.post(
                f"{self.url}/v1/approvals/{approval['id']}/{how}",
                json=body,
                headers=self.headers(APPROVER),
            )
            # 409: it expired or its run was cancelled meanwhile (not an error of the platform).
            if self.check(voted, 200, 409) and voted.status_code == 200:
                self.votes[approval["run_id"]] = how
                self.report.votes[how] = self.report.votes.get(how, 0) + 1


def _request_of(exc: httpx.HTTPError) -> str:
    """``"POST /mcp: "``: the request an HTTP error happened on, when it has one."""
    try:
        return f"{exc.request.method} {exc.request.url.path}: "
    except RuntimeError:  # raised by httpx when the error carries no request
        return ""


# --- measurements ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def db_bytes(admin: Platform, home: Path) -> int:
    """The database's size: SQLite file plus WAL, or the schema's tables with indexes."""
    if admin.store.dialect != "postgresql":
        files = [home / "corral.db", home / "corral.db-wal"]
        return sum(f.stat().st_size for f in files if f.exists())
    from sqlalchemy import text

    query = text(
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    )
    return int(await admin.store.run_sync(lambda c: c.execute(query).scalar_one(), "default"))


async def sampler(soak: Soak, admin: Platform, home: Path, pid: int, began: float) -> None:
    while True:
        at = time.monotonic() - began
        soak.report.rss_samples.append((round(at, 1), rss_kib(pid)))
        soak.report.db_bytes.append((round(at, 1), await db_bytes(admin, home)))
        await asyncio.sleep(soak.config.sample_seconds)


def rss_growth(samples: list[tuple[float, int]], config: Config) -> float | None:
    loaded = [(t, r) for t, r in samples if config.warmup <= t <= config.seconds]
    if len(loaded) < 2:
        return None
    begin, end = loaded[0][0], loaded[-1][0]
    first = [r for t, r in loaded if t < begin + config.window] or [loaded[0][1]]
    last = [r for t, r in loaded if t > end - config.window] or [loaded[-1][1]]
    return statistics.mean(last) / statistics.mean(first) - 1


async def runs(admin: Platform) -> list[Any]:
    """Every run: id, agent, status, terminal reason, output."""
    from sqlalchemy import select

    from corral.runtime._tables import RunRow

    def read(connection: Any) -> list[Any]:
        query = select(RunRow.id, RunRow.status, RunRow.terminal_reason, RunRow.output)
        return list(connection.execute(query).all())

    return await admin.store.run_sync(read, "default")


def check_ends(soak: Soak, rows: list[Any]) -> None:
    """Each run ended as its kind and its vote say."""
    for row in rows:
        kind = soak.expected.get(row.id)
        if kind is None or row.status not in TERMINAL_STATUSES:
            continue
        wanted = {"SUCCEEDED"}
        if kind == "write":
            wanted = {"REJECTED"} if soak.votes.get(row.id) == "reject" else {"SUCCEEDED"}
        elif kind == "slow":
            wanted = {"CANCELLED", "SUCCEEDED"}
        if row.status not in wanted:
            soak.error(f"{kind} run {row.id} ended {row.status} ({row.terminal_reason})")


async def drain(soak: Soak, admin: Platform) -> list[Any]:
    """Wait for every run to end (the approver keeps deciding); returns the runs."""
    began = time.monotonic()
    while True:
        rows = await runs(admin)
        open_runs = [r.id for r in rows if r.status not in TERMINAL_STATUSES]
        if not open_runs or time.monotonic() - began > soak.config.drain_seconds:
            soak.report.stuck_runs = open_runs
            soak.report.drained_in_seconds = round(time.monotonic() - began, 1)
            return rows
        await asyncio.sleep(0.5)


# --- set-up and the whole soak --------------------------------------------------------------------


async def prepare(settings: Settings) -> tuple[Platform, dict[str, str]]:
    """Migrate, register the agents and the policy, issue the three keys."""
    admin = Platform(settings, builtins=BUILTINS)
    await admin.start()
    async with admin.store.transaction("default") as session:
        await apply_documents(
            session,
            [parse_document(d) for d in DOCUMENTS],
            tenant_id="default",
            actor="user:soak",
        )
    keys = {}
    for principal, roles in (
        (REQUESTER, ["builder", "operator"]),
        (APPROVER, ["approver"]),
        (MCP_CALLER, ["builder"]),
    ):
        keys[principal] = await issue_key(
            admin.store,
            server_secret=admin.identity.server_secret,
            tenant_id="default",
            principal=principal,
            roles=roles,
            name=principal.replace(":", "-"),
            kind="service" if principal.startswith("service:") else "user",
        )
    return admin, keys


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_ready(url: str, child: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(1200):
            if child.poll() is not None:
                raise RuntimeError(f"the soak server exited with {child.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("the soak server did not start within 60 s")


async def _schema(url: str, schema: str, *, create: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        statement = f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA "{schema}" CASCADE'
        await conn.execute(text(statement))
    await engine.dispose()


async def soak(config: Config, *, schema: str | None = None) -> Report:
    """Run one soak; returns what it measured.

    Args:
        config: Duration, clients, store...
        schema: An existing PostgreSQL schema to use (kept); default: a fresh one, dropped.
    """
    home = config.home or Path(tempfile.mkdtemp(prefix="corral-soak-"))
    own_schema = config.postgres is not None and schema is None
    if own_schema and config.postgres:
        schema = f"soak_{uuid.uuid4().hex[:10]}"
        await _schema(config.postgres, schema, create=True)
    settings = server_settings(home, config.postgres, schema)
    admin, keys = await prepare(settings)
    report = Report(store="postgresql" if config.postgres else "sqlite", seconds=config.seconds)
    port = _free_port()
    log_path = home / "soak-server.log"
    log = log_path.open("wb")
    env = {**os.environ, "CORRAL_SOAK_TRACEMALLOC": "1" if config.tracemalloc else ""}
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before the load
        [
            sys.executable,
            __file__,
            "--serve",
            str(home),
            str(port),
            config.postgres or "",
            schema or "",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, child)
        state = Soak(config, url, keys, report)
        began = state.began
        tasks = [
            asyncio.create_task(sampler(state, admin, home, child.pid, began)),
            asyncio.create_task(state.approver()),
        ]
        clients = [asyncio.create_task(state.client(n)) for n in range(config.clients)]
        await asyncio.sleep(config.warmup)
        if config.tracemalloc:
            child.send_signal(signal.SIGUSR1)
        await asyncio.sleep(config.seconds - config.warmup)
        state.loading = False
        if config.tracemalloc:
            child.send_signal(signal.SIGUSR1)
        await asyncio.gather(*clients)
        rows = await drain(state, admin)
        check_ends(state, rows)
        report.operations = dict(state.ops)
        report.runs_by_status = dict(Counter(r.status for r in rows))
        report.rss_growth = rss_growth(report.rss_samples, config)
        if child.poll() is not None:
            state.error(f"the server died with exit status {child.returncode}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
        await admin.close()
        if own_schema and config.postgres and schema:
            await _schema(config.postgres, schema, create=False)
    tracebacks = log_path.read_text(errors="replace").count("Traceback")
    if tracebacks:
        report.error_count += tracebacks
        report.errors.append(f"{tracebacks} tracebacks in {log_path}")
    return report


def print_report(report: Report) -> None:
    print(f"Soak on {report.store}, {report.seconds:.0f} s of load")
    print(f"operations: {report.operations}")
    print(f"runs by status: {report.runs_by_status}  votes: {report.votes}")
    print(f"drained in {report.drained_in_seconds} s; stuck runs: {len(report.stuck_runs)}")
    print("RSS (KiB) over time:")
    for at, kib in report.rss_samples:
        print(f"  {at:>7.1f} s  {kib:>9}")
    if report.db_bytes:
        first, last = report.db_bytes[0][1], report.db_bytes[-1][1]
        print(f"DB size: {first / 1e6:.1f} MB -> {last / 1e6:.1f} MB")
    growth = "n/a" if report.rss_growth is None else f"{report.rss_growth * 100:+.1f} %"
    print(f"RSS growth after warm-up: {growth}")
    print(f"errors: {report.error_count} {report.errors[:5]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="load duration")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--postgres", help="PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float)
    parser.add_argument("--window-seconds", type=float)
    parser.add_argument("--drain-seconds", type=float, default=120.0)
    parser.add_argument("--no-rss-check", action="store_true")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the server's Python heap (slow); writes HOME/tracemalloc.txt",
    )
    args = parser.parse_args()
    config = Config(
        seconds=args.seconds,
        clients=args.clients,
        seed=args.seed,
        postgres=args.postgres,
        sample_seconds=args.sample_seconds,
        warmup_seconds=args.warmup_seconds,
        window_seconds=args.window_seconds,
        drain_seconds=args.drain_seconds,
        tracemalloc=args.tracemalloc,
    )
    if args.tracemalloc:
        config.home = Path(tempfile.mkdtemp(prefix="corral-soak-"))
    report = asyncio.run(soak(config))
    if config.home is not None and (config.home / "tracemalloc.txt").exists():
        print((config.home / "tracemalloc.txt").read_text())
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    failures = report.failures(check_rss=not args.no_rss_check)
    for why in failures:
        print(f"FAIL: {why}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _, _, home_arg, port_arg, postgres_arg, schema_arg = sys.argv
        os.environ.pop("CORRAL_STORE__URL", None)
        serve(Path(home_arg), int(port_arg), postgres_arg or None, schema_arg or None)
        sys.exit(0)
    sys.exit(main())
