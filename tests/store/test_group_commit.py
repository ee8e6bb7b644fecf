"""Group commit on SQLite: functions queued together commit together, each in its own savepoint."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import Connection, text

from corral.store import SYSTEM, Store


def _insert(value: str, *, fail: bool = False) -> object:
    def fn(connection: Connection) -> str:
        connection.execute(text("INSERT INTO items (value) VALUES (:v)"), {"v": value})
        if fail:
            raise ValueError(f"refused {value}")
        return value

    return fn


async def _values(store: Store) -> list[str]:
    def read(connection: Connection) -> list[str]:
        return list(connection.execute(text("SELECT value FROM items ORDER BY value")).scalars())

    return await store.run_sync(read, SYSTEM)


async def test_a_failing_function_in_a_group_leaves_the_others_committed(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    try:
        await store.run_sync(
            lambda c: c.execute(text("CREATE TABLE items (value TEXT UNIQUE)")), SYSTEM
        )
        holding, release = threading.Event(), threading.Event()
        groups: list[int] = []

        def hold(connection: Connection) -> None:
            # Keeps the writer busy until the three functions below are queued behind it.
            holding.set()
            assert release.wait(30)

        blocker = asyncio.ensure_future(store.run_sync(hold, SYSTEM))
        assert await asyncio.to_thread(holding.wait, 30)
        writer = store._writer
        assert writer is not None
        original = writer._commit

        def counting(group: list) -> None:  # type: ignore[type-arg]
            groups.append(len(group))
            original(group)

        writer._commit = counting  # type: ignore[method-assign]
        queued = [
            asyncio.ensure_future(store.run_sync(_insert("a"), SYSTEM)),  # type: ignore[arg-type]
            asyncio.ensure_future(store.run_sync(_insert("b", fail=True), SYSTEM)),  # type: ignore[arg-type]
            asyncio.ensure_future(store.run_sync(_insert("c"), SYSTEM)),  # type: ignore[arg-type]
        ]
        await asyncio.sleep(0)
        release.set()
        await blocker
        results = await asyncio.gather(*queued, return_exceptions=True)

        assert groups[0] == 3  # the three waited together and went in one transaction
        assert results[0] == "a" and results[2] == "c"
        assert isinstance(results[1], ValueError) and "refused b" in str(results[1])
        assert await _values(store) == ["a", "c"]
    finally:
        await store.dispose()


def _where(value: str, threads: list[int], *, fail: bool = False) -> object:
    def fn(connection: Connection) -> str:
        threads.append(threading.get_ident())
        return _insert(value, fail=fail)(connection)  # type: ignore[operator,no-any-return]

    return fn


async def test_inline_when_idle_commits_in_the_calling_thread(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    try:
        await store.run_sync(
            lambda c: c.execute(text("CREATE TABLE items (value TEXT UNIQUE)")), SYSTEM
        )
        threads: list[int] = []
        fn = _where("a", threads)
        assert await store.run_sync(fn, SYSTEM, inline_when_idle=True) == "a"  # type: ignore[arg-type]
        failing = _where("b", threads, fail=True)
        try:
            await store.run_sync(failing, SYSTEM, inline_when_idle=True)  # type: ignore[arg-type]
        except ValueError as exc:
            assert "refused b" in str(exc)
        else:
            raise AssertionError("the failing function's error was not raised")
        assert threads == [threading.get_ident()] * 2
        assert await _values(store) == ["a"]  # "b" was rolled back
    finally:
        await store.dispose()


async def test_inline_when_idle_goes_to_the_writer_when_the_lock_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    try:
        await store.run_sync(
            lambda c: c.execute(text("CREATE TABLE items (value TEXT UNIQUE)")), SYSTEM
        )
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        threads: list[int] = []
        fn = _where("a", threads)
        pending = asyncio.ensure_future(store.run_sync(fn, SYSTEM, inline_when_idle=True))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # it tried inline, found the lock taken, and was queued
        assert not pending.done()
        other.execute("COMMIT")
        other.close()
        assert await pending == "a"
        assert threads and threads[0] != threading.get_ident()
        assert await _values(store) == ["a"]
    finally:
        await store.dispose()
