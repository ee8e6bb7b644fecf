"""Multi-host: the API, the workers and PostgreSQL each on a host of its own, then faults.

The hosts are Linux network namespaces the test creates (``ip netns``), wired by veth pairs to
a bridge in a namespace of its own, on a private ``10.77.N.0/24`` (the test's own addresses
only; the root namespace gets one veth, ``.1``, to reach them). PostgreSQL is a private
instance (``initdb`` in a temp directory, run as the ``postgres`` user) listening on its
host's address only; the API (``create_app`` without a worker) and the workers
(``_crash_worker.py``: a scripted model and the idempotent write tool ``crash.effect``, which
applies one effect per step by idempotency key) reach it over the bridge.

The test creates the runs through the API, holds every run at step 2 (its model call waits
for a gate row) until both workers hold runs there, then **cuts one worker's link**
(``ip link set eth0 down`` in its namespace; the process lives on, partitioned) and
**SIGKILLs the other**, starts a replacement on a third host and opens the gate. Every run
must complete; each step and each effect exactly once; a call attempted again only after
the worker attempting it was cut off or killed; the audit chain verifies.

Needs root and iproute2 (skips otherwise, saying why). Leases last 3 s and a silent worker's
sessions end after about 10 s, but nothing asserted depends on timing: the test polls with
generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from _crash_worker import (
    AGENT,
    AGENT_DOCUMENT,
    ATTEMPTS,
    EFFECT_STEPS,
    EFFECTS,
    GATE,
    MODEL_CALLS,
    CrashWorld,
    builtins,
    create_tables,
)
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import register
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES
from corral.runtime._tables import RunRow, StepRow, ToolCallRow
from corral.settings import Settings, StoreSettings
from corral.tenancy import issue_key

RUNS = 24
HOLD_STEP = 2
LEASE_SECONDS = 3.0
CONCURRENCY = 8
"""Runs each worker drives at once (2 workers x 8 > RUNS / 2: both hold runs at the gate)."""
DEAD_CLIENT_SECONDS = 10
"""How long the server keeps a silent worker's sessions (and the run rows they hold locked).
A worker cut off mid-checkpoint leaves its session waiting for the rest of a pipelined
statement with unacknowledged data in flight, where neither keepalives nor
``idle_in_transaction_session_timeout`` apply: before Corral set ``tcp_user_timeout`` the run
stayed locked (skipped by every claim) for about 15 minutes."""
DEADLINE_SECONDS = 300.0
"""Generous bound for each phase (start-up, reaching the gate, finishing) on a loaded machine."""
API_PORT = 8420
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run the suite as root or in a container)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if not PG_BIN or shutil.which("setpriv") is None:
        return "a PostgreSQL server (/usr/lib/postgresql/*/bin) and setpriv are needed"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no `postgres` user to run the private PostgreSQL server as"
    return None


pytestmark = [
    pytest.mark.skipif(_why_not() is not None, reason=_why_not() or ""),
    pytest.mark.timeout(600),
]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Network:
    """A bridge namespace and host namespaces on ``10.77.{octet}.0/24``."""

    tag: str = field(default_factory=lambda: f"crl{secrets.token_hex(2)}")
    octet: int = field(default_factory=lambda: 100 + secrets.randbelow(150))
    hosts: dict[str, str] = field(default_factory=dict)
    """Role -> address."""

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def up(self) -> None:
        """The bridge, and the root namespace's leg (``.1``) so the test reaches the hosts."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        self._leg(f"{self.tag}-h", None)
        _ip("addr", "add", f"10.77.{self.octet}.1/24", "dev", f"{self.tag}-h")
        _ip("link", "set", f"{self.tag}-h", "up")

    def _leg(self, name: str, namespace: str | None) -> None:
        """A veth pair: ``name`` (``eth0`` in ``namespace``) on one end, the bridge on the other."""
        port = f"{name}-p" if namespace is None else name
        if namespace is None:
            _ip("link", "add", name, "type", "veth", "peer", "name", port, "netns", self.switch)
        else:
            _ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")

    def add_host(self, role: str) -> str:
        """A namespace ``role`` with ``eth0`` on the bridge; returns its address."""
        namespace = self.ns(role)
        address = f"10.77.{self.octet}.{10 + len(self.hosts)}"
        _ip("netns", "add", namespace)
        self._leg(f"{self.tag}{role}", namespace)
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        self.hosts[role] = address
        return address

    def cut(self, role: str) -> None:
        """Take ``role``'s link down: the host and its processes live on, unreachable."""
        _ip("-n", self.ns(role), "link", "set", "eth0", "down")

    def exec(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def down(self) -> None:
        for role in self.hosts:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", self.ns(role))
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.switch)
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", f"{self.tag}-h")


@dataclass
class Processes:
    """Every process the test starts, logged to files, always killed at the end."""

    directory: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    excused: set[str] = field(default_factory=set)
    """Processes that may end before the test does (killed, or cut off)."""
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, how: signal.Signals = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(how)
            proc.wait()

    def close(self) -> None:
        for name in self.procs:
            # PostgreSQL's immediate shutdown takes its backends down with it.
            self.kill(name, signal.SIGQUIT if name == "postgres" else signal.SIGKILL)
        for log in self._logs:
            log.close()

    def tails(self, lines: int = 20) -> str:
        parts = []
        for name in self.procs:
            path = self.directory / f"{name}.log"
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)


def start_postgres(net: Network, procs: Processes, directory: Path) -> str:
    """A private PostgreSQL on the ``pg`` host; returns its SQLAlchemy URL."""
    address = net.add_host("pg")
    data = directory / "data"
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    bin_dir = PG_BIN[-1].parent
    subprocess.run(
        [
            *as_postgres,
            str(bin_dir / "initdb"),
            *("-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"),
        ],
        check=True,
        capture_output=True,
    )
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all 10.77.{net.octet}.0/24 trust\n")
    settings = {
        "max_connections": "300",
        "fsync": "off",
        # Nothing about dead clients here: Corral's own sessions carry tcp_user_timeout and
        # keepalives (CORRAL_STORE__POSTGRES_DEAD_CLIENT_SECONDS, below), which is what ends the
        # cut-off worker's sessions and frees the runs they held locked.
    }
    options = [item for k, v in settings.items() for item in ("-c", f"{k}={v}")]
    procs.start(
        "postgres",
        net.exec(
            "pg",
            *as_postgres,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-k",
            str(directory),
            "-h",
            address,
            *options,
        ),
        dict(os.environ),
    )
    return f"postgresql+asyncpg://postgres@{address}:5432/postgres"


def node_env(home: Path, url: str, worker_id: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        CORRAL_HOME=str(home),
        CORRAL_STORE__URL=url,
        CORRAL_STORE__POOL_SIZE="10",
        CORRAL_STORE__MAX_OVERFLOW="5",
        CORRAL_STORE__POSTGRES_DEAD_CLIENT_SECONDS=str(DEAD_CLIENT_SECONDS),
        CORRAL_RUNTIME__LEASE_SECONDS=str(LEASE_SECONDS),
        CORRAL_RUNTIME__POLL_INTERVAL_SECONDS="0.1",
        CORRAL_RUNTIME__SIGNAL_POLL_SECONDS="0.5",
        CORRAL_RUNTIME__WORKER_CONCURRENCY=str(CONCURRENCY),
        CORRAL_CRASH_HOLD_STEP=str(HOLD_STEP),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(HERE), env.get("PYTHONPATH", "")]),
    )
    return env


API_PROGRAM = """
import sys, uvicorn
from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings
settings = Settings()
app = create_app(Platform(settings, migrate=False), run_worker=False)
uvicorn.run(app, host=sys.argv[1], port=int(sys.argv[2]), log_level="warning",
            timeout_keep_alive=settings.api.keep_alive_seconds)
"""


def start_worker(net: Network, procs: Processes, role: str, home: Path, url: str) -> Path:
    """``_crash_worker.py`` on host ``role``; returns the file it touches once polling."""
    ready = procs.directory / f"{role}.ready"
    argv = [sys.executable, str(HERE / "_crash_worker.py"), role, str(ready), "7", str(os.getpid())]
    procs.start(role, net.exec(role, *argv), node_env(home, url))
    return ready


async def until(what: str, check: Any, procs: Processes, explain: Any = None) -> None:
    """Poll ``await check()`` until true; fail after :data:`DEADLINE_SECONDS`.

    ``explain``, if given, is awaited on a timeout and its text goes into the failure message
    (what was stuck, read from the store).
    """
    began = time.monotonic()
    while not await check():
        dead = {
            n: p.returncode
            for n, p in procs.procs.items()
            if p.poll() is not None and n not in procs.excused
        }
        assert not dead, f"{dead} exited while waiting for {what}"
        if time.monotonic() - began >= DEADLINE_SECONDS:
            detail = "" if explain is None else f"\n{await explain()}"
            raise AssertionError(f"timed out waiting for {what}{detail}")
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def hosts(directory: Path) -> Iterator[tuple[Network, Processes]]:
    net, procs = Network(), Processes(directory)
    try:
        try:
            net.up()
        except RuntimeError as exc:
            if "not permitted" in str(exc):  # root without CAP_SYS_ADMIN (a locked container)
                pytest.skip(f"cannot create network namespaces here: {exc}")
            raise
        yield net, procs
    finally:
        procs.close()
        net.down()


@contextlib.asynccontextmanager
async def admin_platform(home: Path, url: str, procs: Processes) -> AsyncIterator[Platform]:
    """The test's own view of the store, from the root namespace (over the bridge)."""

    async def accepting() -> bool:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (OSError, DBAPIError):
            return False
        finally:
            await engine.dispose()
        return True

    await until("PostgreSQL", accepting, procs)
    platform = Platform(
        Settings(home=home, store=StoreSettings(url=url)), builtins=builtins(CrashWorld("t", 7))
    )
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


def read_everything(connection: Connection) -> dict[str, list[Any]]:
    return {
        "runs": connection.execute(select(RunRow.__table__)).all(),
        "steps": connection.execute(
            select(StepRow.run_id, StepRow.index).order_by(StepRow.index)
        ).all(),
        "calls": connection.execute(
            select(ToolCallRow.run_id, ToolCallRow.idempotency_key, ToolCallRow.status)
        ).all(),
        "leases": connection.execute(
            select(
                AuditEventRow.run_id,
                AuditEventRow.actor,
                AuditEventRow.occurred_at,
                AuditEventRow.details,
            )
            .where(AuditEventRow.action == "run.leased")
            .order_by(AuditEventRow.seq)
        ).all(),
        "effects": connection.execute(select(EFFECTS)).all(),
        "attempts": connection.execute(select(ATTEMPTS).order_by(ATTEMPTS.c.at)).all(),
    }


def check(data: dict[str, list[Any]], broken: dict[str, float]) -> dict[str, int]:
    """Every run done, each step and each effect once; returns the figures."""
    runs = {r.id: r for r in data["runs"]}
    assert len(runs) == RUNS
    steps: dict[str, list[int]] = defaultdict(list)
    for s in data["steps"]:
        steps[s.run_id].append(s.index)
    calls: dict[str, list[Any]] = defaultdict(list)
    for c in data["calls"]:
        calls[c.run_id].append((c.idempotency_key, c.status))
    for run_id, run in runs.items():
        assert (run.status, run.output) == ("SUCCEEDED", f"{run.task}: 5 effects applied"), run
        assert steps[run_id] == list(range(EFFECT_STEPS + 1)), steps[run_id]
        assert sorted(calls[run_id]) == [
            (f"{run_id}:{n}:0", "COMPLETED") for n in range(EFFECT_STEPS)
        ]
    keys = sorted(c.idempotency_key for c in data["calls"])
    assert sorted(e.idempotency_key for e in data["effects"]) == keys  # each effect once
    leases: dict[str, list[Any]] = defaultdict(list)
    for lease in data["leases"]:
        leases[lease.run_id].append(lease)
    tries: dict[str, list[Any]] = defaultdict(list)
    reattempts = 0
    for attempt in data["attempts"]:
        tries[attempt.idempotency_key].append(attempt)
    for key, attempts in tries.items():
        run_leases = leases[key.rsplit(":", 2)[0]]
        for before, after in itertools.pairwise(attempts):
            # Only once the run was leased again: its worker cut off or killed, or its lease
            # expired (a worker starved of CPU for a whole lease on a loaded machine).
            released = any(
                before.at < lease.occurred_at.timestamp() < after.at for lease in run_leases
            )
            assert released, f"{key} attempted twice under one lease: {attempts}, {run_leases}"
            reattempts += 1
    owners: dict[str, list[str]] = defaultdict(list)
    for lease in data["leases"]:
        owners[lease.run_id].append(lease.actor.removeprefix("worker:"))
    taken_over = {
        f"from_{role}": sum(held[0] == role and held[-1] == "w3" for held in owners.values())
        for role in ("w1", "w2")
    }
    return {**taken_over, "reattempts": reattempts}


async def create_runs(api_url: str, key: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
        for n in range(RUNS):
            response = await client.post(
                f"/v1/agents/{AGENT}/runs",
                json={"task": f"multihost run {n:02d}", "stage": "dev"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 201, response.text


async def test_cut_and_killed_workers_lose_no_run_and_repeat_no_effect(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="corral-multihost-"))
    shutil.chown(directory, "postgres", "postgres")  # the private server's data and socket
    home = tmp_path / "home"
    with hosts(tmp_path) as (net, procs):
        try:
            url = start_postgres(net, procs, directory)
            async with admin_platform(home, url, procs) as admin:
                await run_scenario(net, procs, admin, home, url)
        except BaseException:
            print(procs.tails())
            raise
        finally:
            procs.close()
            shutil.rmtree(directory, ignore_errors=True)


async def run_scenario(
    net: Network, procs: Processes, admin: Platform, home: Path, url: str
) -> None:
    await admin.store.run_sync(create_tables, "default")
    await register(admin, AGENT_DOCUMENT)
    key = await issue_key(
        admin.store,
        server_secret=admin.identity.server_secret,
        tenant_id="default",
        principal="user:multihost",
        roles=["builder"],
        name="multihost",
        kind="user",
    )
    api_address = net.add_host("api")
    api_argv = [sys.executable, "-c", API_PROGRAM, api_address, str(API_PORT)]
    procs.start("api", net.exec("api", *api_argv), node_env(home, url))
    ready = {}
    for role in ("w1", "w2"):
        net.add_host(role)
        ready[role] = start_worker(net, procs, role, home, url)
    api_url = f"http://{api_address}:{API_PORT}"

    async def api_up() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{api_url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await until("the API", api_up, procs)
    await until("the workers", lambda: _all_exist(ready.values()), procs)
    await create_runs(api_url, key)

    async def both_hold_runs_at_the_gate() -> bool:
        def held(connection: Connection) -> set[str]:
            query = select(MODEL_CALLS.c.worker).where(MODEL_CALLS.c.step == HOLD_STEP)
            return set(connection.execute(query).scalars())

        return {"w1", "w2"} <= await admin.store.run_sync(held, "default")

    await until("both workers holding runs at the gate", both_hold_runs_at_the_gate, procs)
    broken = {}
    net.cut("w1")
    broken["w1"] = time.time()
    procs.excused |= {"w1", "w2"}  # partitioned: whether w1 lives on is not the point
    procs.kill("w2")
    broken["w2"] = time.time()
    net.add_host("w3")
    ready["w3"] = start_worker(net, procs, "w3", home, url)
    await until("the replacement worker", lambda: _all_exist([ready["w3"]]), procs)
    await admin.store.run_sync(
        lambda c: c.execute(insert(GATE), [{"opened_at": time.time()}]), "default"
    )

    async def all_done() -> bool:
        def count(connection: Connection) -> int:
            query = select(RunRow.id).where(RunRow.status.not_in(TERMINAL_STATUSES))
            return len(connection.execute(query).all())

        return await admin.store.run_sync(count, "default") == 0

    async def stuck() -> str:
        def read(connection: Connection) -> str:
            runs = connection.execute(
                select(
                    RunRow.id,
                    RunRow.status,
                    RunRow.step_count,
                    RunRow.lease_owner,
                    RunRow.lease_expires_at,
                    RunRow.lease_epoch,
                ).where(RunRow.status.not_in(TERMINAL_STATUSES))
            ).all()
            sessions = connection.execute(
                text(
                    "SELECT pid, client_addr, state, wait_event_type, wait_event, "
                    "now() - xact_start AS in_xact, left(query, 120) AS query "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ).all()
            return (
                "open runs:\n"
                + "\n".join(map(str, runs))
                + ("\nsessions:\n" + "\n".join(map(str, sessions)))
            )

        return str(await admin.store.run_sync(read, "default")) + "\n" + procs.tails(40)

    await until("every run to end", all_done, procs, explain=stuck)
    figures = check(await admin.store.run_sync(read_everything, "default"), broken)
    # The replacement finished runs both the cut-off worker and the killed one had started.
    assert figures["from_w1"] >= 1 and figures["from_w2"] >= 1, figures
    async with admin.store.transaction("default") as session:
        assert (await verify_chain(session, tenant_id="default")).ok
    print(f"multihost: {figures}")


async def _all_exist(paths: Any) -> bool:
    return all(await asyncio.gather(*(asyncio.to_thread(Path(p).exists) for p in paths)))
