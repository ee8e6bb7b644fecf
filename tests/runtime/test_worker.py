"""Workers under store faults: they survive, hand runs back, and renew only what they drive.

Faults are injected at the database edge, on SQLite and on PostgreSQL:

* SQLite: another connection holds the write lock (``BEGIN IMMEDIATE``); the worker's store has
  a short busy timeout, so its writes fail with ``database is locked``.
* PostgreSQL: the worker connects as a role of its own (a member of the application role);
  the outage sets that role's ``CONNECTION LIMIT 0`` and terminates its backends, so every
  connection attempt fails with ``too many connections for role``.

No assertion depends on how long anything takes: tests wait for log records and stored states,
and expire leases explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import APP_ROLE, POSTGRES_URL, agent_document, register
from corral.audit._tables import AuditEventRow
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.platform import Platform
from corral.runtime import create_run, get_run
from corral.runtime._tables import RunRow
from corral.runtime._worker import Backoff
from corral.settings import Settings
from corral.store import SYSTEM, is_transient_error, utcnow
from corral.testing import ScriptedModel

WORKER_LOG = "corral.runtime._worker"
_TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"


# --- outages at the database edge -----------------------------------------------------------------


class Outage:
    """Makes the worker's database refuse it, until :meth:`end` (idempotent both ways)."""

    async def start(self) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """End the outage; synchronous, so that a log handler can call it on the spot."""
        raise NotImplementedError


class SqliteLock(Outage):
    """Another connection holds SQLite's write lock."""

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(
            path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self.held = False

    async def start(self) -> None:
        if not self.held:
            self.connection.execute("BEGIN IMMEDIATE")
            self.held = True

    def end(self) -> None:
        if self.held:
            self.connection.execute("ROLLBACK")
            self.held = False


class RoleLockedOut(Outage):
    """The worker's PostgreSQL role may not connect; its open connections are terminated."""

    def __init__(self, role: str) -> None:
        self.role = role

    async def start(self) -> None:
        await _as_superuser(
            f"ALTER ROLE {self.role} CONNECTION LIMIT 0",
            _TERMINATE.format(role=self.role),
        )

    def end(self) -> None:
        # From a thread with a loop of its own: callable from inside the worker's event loop.
        thread = threading.Thread(
            target=asyncio.run,
            args=(_as_superuser(f"ALTER ROLE {self.role} CONNECTION LIMIT -1"),),
        )
        thread.start()
        thread.join()


async def _as_superuser(*statements: str) -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


class Records(logging.Handler):
    """The worker's log records; runs ``on_record`` hooks synchronously as they arrive."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.hooks: list[tuple[str, Callable[[], None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        for fragment, hook in self.hooks:
            if fragment in message:
                hook()

    def count(self, fragment: str) -> int:
        return sum(1 for m in self.messages if fragment in m)


# --- fixtures -------------------------------------------------------------------------------------


Faulty = Callable[[ScriptedModel], Awaitable[tuple[Platform, Outage]]]


@pytest.fixture
async def records() -> AsyncIterator[Records]:
    handler = Records()
    logger = logging.getLogger(WORKER_LOG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def faulty(settings: Settings) -> AsyncIterator[Faulty]:
    """``platform, outage = await faulty(model)``: a started platform whose store can fail."""
    started: list[Platform] = []
    cleanups: list[Callable[[], Awaitable[None]]] = []
    fast = {
        "poll_interval_seconds": 0.02,
        "lease_seconds": 30,
        "store_retry_initial_seconds": 0.05,
        "store_retry_max_seconds": 0.2,
    }

    async def make(model: ScriptedModel) -> tuple[Platform, Outage]:
        store = settings.store.model_copy(update={"sqlite_busy_timeout_ms": 100})
        outage: Outage
        if settings.store_url.startswith("sqlite"):
            database = make_url(settings.store_url).database
            assert database is not None
            outage = SqliteLock(database)
        else:
            first = Platform(settings)  # migrates as the application role
            await first.start()
            await first.close()
            role = f"corral_w_{uuid.uuid4().hex[:10]}"
            await _as_superuser(
                f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {APP_ROLE}"
            )
            store = store.model_copy(update={"url": str(make_url(store.url).set(username=role))})
            outage = RoleLockedOut(role)

            async def drop_role() -> None:
                await _as_superuser(
                    f"ALTER ROLE {role} CONNECTION LIMIT -1",
                    _TERMINATE.format(role=role),
                    f"DROP OWNED BY {role}",
                    f"DROP ROLE {role}",
                )

            cleanups.append(drop_role)
        custom = settings.model_copy(
            update={"store": store, "runtime": settings.runtime.model_copy(update=fast)}
        )
        platform = Platform(custom, providers={"scripted": model})
        await platform.start()
        started.append(platform)
        await register(platform, agent_document(tools={"allowed": []}))
        cleanups.append(_ended(outage))
        return platform, outage

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()
    for platform in started:
        await platform.close()


def _ended(outage: Outage) -> Callable[[], Awaitable[None]]:
    async def end() -> None:
        outage.end()

    return end


# --- helpers --------------------------------------------------------------------------------------


async def start_run(platform: Platform, task: str = "Answer.") -> str:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session, tenant_id="default", agent_name="repo-analyst", task=task, requested_by="u:t"
        )
    return run.id


async def load(platform: Platform, run_id: str) -> RunRow:
    async with platform.store.read("default") as session:
        return await get_run(session, run_id, tenant_id="default")


async def leases(platform: Platform, run_id: str) -> list[str]:
    async with platform.store.read("default") as session:
        rows = await session.scalars(
            select(AuditEventRow.actor)
            .where(AuditEventRow.run_id == run_id, AuditEventRow.action == "run.leased")
            .order_by(AuditEventRow.seq)
        )
        return list(rows)


async def until(predicate: Callable[[], Awaitable[bool] | bool], seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def expire_lease(platform: Platform, run_id: str) -> None:
    async with platform.store.transaction(SYSTEM) as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


class Running:
    """A worker loop running as a task until the context exits."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.platform.worker.run(self.stop))
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    def alive(self) -> bool:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # raises what ended it
            return False
        return True


async def succeeded(platform: Platform, run_id: str) -> bool:
    try:
        return (await load(platform, run_id)).status == "SUCCEEDED"
    except Exception as exc:  # the test reads through the same store: maybe in an outage too
        if is_transient_error(exc):
            return False
        raise


# --- the claim query fails ------------------------------------------------------------------------


async def test_worker_survives_failing_claims_and_later_completes_runs(
    faulty: Faulty, records: Records
) -> None:
    model = ScriptedModel(lambda _request: FinalAnswer("done"))
    platform, outage = await faulty(model)
    run_id = await start_run(platform)
    await outage.start()
    async with Running(platform) as worker:
        await until(lambda: records.count("claiming runs failed") >= 3)
        assert worker.alive()
        outage.end()
        await until(lambda: succeeded(platform, run_id))
        assert worker.alive()
    run = await load(platform, run_id)
    assert (run.output, run.lease_owner) == ("done", None)


# --- a transient error in the middle of a run -----------------------------------------------------


async def test_transient_error_mid_run_hands_the_run_back_and_it_completes(
    faulty: Faulty, records: Records
) -> None:
    calls = 0
    outage_holder: list[Outage] = []

    async def decide(_request: ModelRequest) -> FinalAnswer:
        nonlocal calls
        calls += 1
        if calls == 1:  # the store goes away while the model thinks: the checkpoint fails
            await outage_holder[0].start()
        return FinalAnswer(f"answer {calls}")

    platform, outage = await faulty(ScriptedModel(decide))
    outage_holder.append(outage)
    # The outage ends as soon as the worker decides to hand the run back, so the hand-back
    # itself reaches the store (the next test covers a hand-back that cannot).
    records.hooks.append(("handing it back", outage.end))
    run_id = await start_run(platform)
    async with Running(platform) as worker:
        await until(lambda: succeeded(platform, run_id))
        assert worker.alive()
    run = await load(platform, run_id)
    assert (run.status, run.output, run.error) == ("SUCCEEDED", "answer 2", None)
    assert records.count(f"run {run_id} hit a transient store error") == 1
    assert records.count("handing back run") == 0  # the hand-back was written
    # Claimed twice by the same worker: handed back, then resumed from its last checkpoint.
    assert await leases(platform, run_id) == [f"worker:{platform.worker.worker_id}"] * 2


async def test_run_whose_hand_back_fails_too_is_reclaimed_after_its_lease(
    faulty: Faulty, records: Records
) -> None:
    calls = 0
    outage_holder: list[Outage] = []

    async def decide(_request: ModelRequest) -> FinalAnswer:
        nonlocal calls
        calls += 1
        if calls == 1:
            await outage_holder[0].start()
        return FinalAnswer(f"answer {calls}")

    platform, outage = await faulty(ScriptedModel(decide))
    outage_holder.append(outage)
    run_id = await start_run(platform)
    async with Running(platform) as worker:
        await until(lambda: records.count(f"handing back run {run_id} failed too") == 1)
        outage.end()
        stranded = await load(platform, run_id)
        # Not FAILED: still RUNNING under this worker's lease, at its last checkpoint.
        assert (stranded.status, stranded.lease_owner) == (
            "RUNNING",
            platform.worker.worker_id,
        )
        assert stranded.error is None
        assert await platform.worker.renew_leases() == []  # no longer driven: not renewed
        assert (await load(platform, run_id)).lease_expires_at == stranded.lease_expires_at
        await expire_lease(platform, run_id)
        await until(lambda: succeeded(platform, run_id))
        assert worker.alive()
    assert (await load(platform, run_id)).output == "answer 2"


# --- a deterministic error whose failure cannot be recorded ---------------------------------------


async def test_run_whose_failure_cannot_be_recorded_is_not_kept_alive_by_the_heartbeat(
    faulty: Faulty, records: Records
) -> None:
    calls = 0
    outage_holder: list[Outage] = []

    async def decide(_request: ModelRequest) -> FinalAnswer:
        nonlocal calls
        calls += 1
        if calls == 1:
            await outage_holder[0].start()
            raise RuntimeError("a bug in the runtime")  # deterministic: the run must fail
        return FinalAnswer("recovered")

    platform, outage = await faulty(ScriptedModel(decide))
    outage_holder.append(outage)
    run_id = await start_run(platform)
    async with Running(platform) as worker:
        await until(lambda: records.count(f"recording the failure of run {run_id} failed") == 1)
        outage.end()
        stranded = await load(platform, run_id)
        assert (stranded.status, stranded.lease_owner) == ("RUNNING", platform.worker.worker_id)
        assert await platform.worker.renew_leases() == []
        assert (await load(platform, run_id)).lease_expires_at == stranded.lease_expires_at
        await expire_lease(platform, run_id)  # what time would do, since nobody renews it
        await until(lambda: succeeded(platform, run_id))
        assert worker.alive()


async def test_deterministic_error_fails_the_run_for_good(faulty: Faulty, records: Records) -> None:
    def decide(_request: ModelRequest) -> FinalAnswer:
        raise RuntimeError("a bug in the runtime")

    platform, _outage = await faulty(ScriptedModel(decide))
    run_id = await start_run(platform)
    await platform.worker.run_until_idle()
    run = await load(platform, run_id)
    assert (run.status, run.terminal_reason, run.lease_owner) == ("FAILED", "internal_error", None)
    assert run.error == "RuntimeError: a bug in the runtime"
    assert records.count("hit a transient store error") == 0


# --- the heartbeat --------------------------------------------------------------------------------


async def test_heartbeat_renews_only_the_runs_the_worker_drives(faulty: Faulty) -> None:
    release = asyncio.Event()

    async def decide(_request: ModelRequest) -> FinalAnswer:
        await release.wait()
        return FinalAnswer("done")

    platform, _outage = await faulty(ScriptedModel(decide))
    worker_id = platform.worker.worker_id
    driven, stranded = await start_run(platform, "driven"), await start_run(platform, "stranded")
    claimed = await platform.worker.claim_many(1)
    assert claimed == [driven]
    epoch = (await load(platform, driven)).lease_epoch
    task = asyncio.create_task(platform.worker._execute(driven, epoch))
    await until(lambda: bool(platform.executor.running_states()))
    # The other run is this worker's in the table (say its failure could not be recorded)
    # but nothing drives it.
    old = utcnow() + timedelta(seconds=5)
    async with platform.store.transaction(SYSTEM) as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id.in_([driven, stranded]))
            .values(status="RUNNING", lease_owner=worker_id, lease_expires_at=old)
        )
    renewed = await platform.worker.renew_leases()
    assert renewed == [driven]
    driven_row, stranded_row = await load(platform, driven), await load(platform, stranded)
    assert driven_row.lease_expires_at is not None
    assert _naive(driven_row.lease_expires_at) > _naive(old)
    assert _naive(stranded_row.lease_expires_at) == _naive(old)
    release.set()
    await task
    assert (await load(platform, driven)).status == "SUCCEEDED"


def _naive(moment: Any) -> Any:
    return moment.replace(tzinfo=None) if moment is not None else None


# --- what counts as transient, and the backoff ----------------------------------------------------


async def test_store_errors_from_an_outage_are_transient(faulty: Faulty) -> None:
    platform, outage = await faulty(ScriptedModel([]))
    await outage.start()
    with pytest.raises(Exception) as raised:
        await platform.worker.claim_many(1)
    outage.end()
    assert is_transient_error(raised.value), repr(raised.value)
    assert not is_transient_error(RuntimeError("a bug"))


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    assert [backoff.bound(n) for n in (1, 2, 3, 4, 7, 8, 1000)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        30.0,
        30.0,
        30.0,
    ]
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert len(set(delays)) == 200  # jittered, not one value for every worker
