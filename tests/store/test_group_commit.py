"""Group commit on SQLite: functions queued together commit together, each in its own savepoint."""

from __future__ import annotations

import asyncio
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
