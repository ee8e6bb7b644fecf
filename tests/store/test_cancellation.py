"""A task cancelled in the middle of a transaction leaves no transaction and no lock behind."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from corral.store import SYSTEM, Store
from corral.store._engine import RollbackOnClose, _to_completion


def _take_write_lock(path: Path) -> None:
    """``BEGIN IMMEDIATE`` from a connection of our own (waits up to 10 s for the lock)."""
    probe = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    finally:
        probe.close()


async def test_a_task_cancelled_while_begin_waits_for_the_lock_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cancel.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    try:
        await store.run_sync(lambda c: c.execute(text("CREATE TABLE t (x INTEGER)")), SYSTEM)
        entered = asyncio.Event()

        async def write() -> None:
            async with store.transaction(SYSTEM) as session:
                entered.set()
                await session.execute(text("INSERT INTO t VALUES (1)"))

        for _ in range(3):
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # the task's BEGIN IMMEDIATE waits for this
            task = asyncio.create_task(write())
            await asyncio.sleep(0.2)  # more time than reaching BEGIN takes: it waits there now
            task.cancel()
            other.execute("ROLLBACK")  # the driver's BEGIN goes through after the cancellation
            other.close()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not entered.is_set()
            await asyncio.to_thread(_take_write_lock, path)  # "database is locked" if leaked
    finally:
        await store.dispose()


async def test_tasks_cancelled_anywhere_in_their_transactions_leave_the_lock_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cancel.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    delays = random.Random(7)
    try:
        await store.run_sync(lambda c: c.execute(text("CREATE TABLE t (x INTEGER)")), SYSTEM)

        async def write_forever() -> None:
            while True:
                async with store.transaction(SYSTEM) as session:
                    await session.execute(text("INSERT INTO t VALUES (1)"))
                    await session.execute(text("SELECT count(*) FROM t"))
                async with store.read(SYSTEM) as session:
                    await session.execute(text("SELECT count(*) FROM t"))

        # Cancelled after a few milliseconds, the task is in BEGIN, a statement, COMMIT or the
        # pool's check-in; whichever it was, the write lock must be free afterwards.
        for _ in range(150):
            task = asyncio.create_task(write_forever())
            await asyncio.sleep(delays.random() * 0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(_take_write_lock, path)  # "database is locked" if leaked
        async with store.transaction(SYSTEM) as session:  # the pool still serves
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() > 0
    finally:
        await store.dispose()


def test_closing_a_connection_with_a_pending_statement_releases_its_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "zombie.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    setup.close()

    connection = sqlite3.connect(path, isolation_level=None, factory=RollbackOnClose)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO t VALUES (4)")
    pending = connection.execute("SELECT x FROM t")
    assert pending.fetchone() is not None  # the statement is mid-way, not finalized
    connection.close()

    _take_write_lock(path)
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (3,)  # rolled back
    finally:
        check.close()
    del pending


async def test_a_step_run_to_completion_finishes_before_the_cancellation_is_raised() -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def step() -> None:
        started.set()
        await release.wait()
        finished.set()

    task = asyncio.create_task(_to_completion(step()))
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for the step
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_a_step_run_to_completion_raises_its_own_error() -> None:
    async def step() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await _to_completion(step())
