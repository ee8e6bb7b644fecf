"""PostgreSQL transactions of ``Store.run_sync`` / ``read_sync``: the pre-ping begins them.

A pooled connection's pre-ping is the transaction's ``BEGIN`` (and, for ``run_sync`` and
``read_sync``, sets the tenant scope in the same round trip). These check what that must keep:
every transaction sees exactly its own scope (never a previous one's: the setting is
transaction-local), a scope that cannot be written as a plain literal still works, a pooled
connection the server ended is replaced as the pre-ping replaced it, and a connection checked
out for nothing holds no transaction once it is back in the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from corral.platform import Platform
from corral.settings import Settings
from corral.store import SYSTEM, Scope

_SCOPE = text("SELECT current_setting('corral.tenant_id', true), pg_backend_pid()")


def _scope_and_pid(connection: Connection) -> tuple[Any, int]:
    setting, pid = connection.execute(_SCOPE).one()
    return setting, int(pid)


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    """A started platform on PostgreSQL, closed after the test; skips on SQLite."""
    started = Platform(settings)
    await started.start()
    try:
        if started.store.dialect != "postgresql":
            pytest.skip("PostgreSQL only")
        yield started
    finally:
        await started.close()


async def _outside_any_transaction(platform: Platform) -> Any:
    """The scope a checked-out connection's first statement sees (no scope set for it)."""
    async with platform.store.engine.connect() as connection:
        return (
            await connection.execute(text("SELECT current_setting('corral.tenant_id', true)"))
        ).scalar()


async def test_each_transaction_sees_its_own_scope_and_none_leaks(platform: Platform) -> None:
    store = platform.store
    scopes: list[Scope] = ["acme", "globex", SYSTEM, "it's-odd\\tenant", "acme"]
    pids = set()
    for _ in range(2):  # the second pass reuses pooled connections (the pre-ping path)
        for scope in scopes:
            expected = "*" if scope is SYSTEM else scope
            seen, pid = await store.run_sync(_scope_and_pid, scope)
            assert seen == expected
            seen, pid = await store.read_sync(_scope_and_pid, scope)
            assert seen == expected
            pids.add(pid)
            # Transaction-local: the next user of the connection starts with no scope.
            assert await _outside_any_transaction(platform) in (None, "")
    # Concurrent transactions each see their own.
    got = await asyncio.gather(
        *(store.run_sync(_scope_and_pid, f"t{i}") for i in range(8)),
        *(store.read_sync(_scope_and_pid, f"r{i}") for i in range(8)),
    )
    assert [g[0] for g in got] == [f"t{i}" for i in range(8)] + [f"r{i}" for i in range(8)]


async def test_a_pooled_connection_the_server_ended_is_replaced(
    platform: Platform, settings: Settings
) -> None:
    store = platform.store
    _, pid = await store.run_sync(_scope_and_pid, "acme")
    other = create_async_engine(settings.store_url)  # not a connection of the pool
    try:
        async with other.begin() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await other.dispose()
    # The pooled connection is dead; the pre-ping (its BEGIN) finds it and the pool
    # replaces it: the call succeeds with its scope, on another backend.
    for _ in range(3):
        seen, new_pid = await store.run_sync(_scope_and_pid, "acme")
        assert seen == "acme" and new_pid != pid


async def test_a_connection_checked_out_for_nothing_is_returned_idle(
    platform: Platform, settings: Settings
) -> None:
    store = platform.store
    _, pid = await store.run_sync(_scope_and_pid, "acme")  # one pooled connection
    async with store.engine.connect():
        pass  # checked out (pinged: begun) and returned with no statement
    other = create_async_engine(settings.store_url)  # not a connection of the pool
    try:
        async with other.connect() as probe:
            states = (
                await probe.execute(
                    text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                )
            ).scalars()
            assert list(states) == ["idle"]  # not "idle in transaction"
    finally:
        await other.dispose()
