"""Governance.engine: one reload of a tenant's policies per cache miss, shared by its callers."""

from __future__ import annotations

import asyncio

from sqlalchemy import event

from conftest import PlatformFactory


async def test_concurrent_callers_share_one_reload_of_a_tenants_engine(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    governance = platform.governance
    sync_engine = platform.store.engine.sync_engine
    reads: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM policy_versions" in statement:
            reads.append(statement)

    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        governance.invalidate("default")
        first = await asyncio.gather(*(governance.engine("default") for _ in range(20)))
        governance.invalidate("default")
        governance.invalidate("team-x")
        both = await asyncio.gather(
            *(governance.engine(t) for t in ("default", "team-x") for _ in range(5))
        )
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_execute)
    assert len({id(engine) for engine in first}) == 1
    assert all(engine is first[0] for engine in both)  # same (default) policies: one engine
    assert len(reads) == 3  # one per tenant and cache miss, not one per caller


async def test_an_engine_invalidated_during_its_reload_is_not_cached(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    governance = platform.governance
    sync_engine = platform.store.engine.sync_engine
    reads: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM policy_versions" in statement:
            reads.append(statement)

    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        governance.invalidate("default")
        loading = asyncio.ensure_future(governance.engine("default"))
        await asyncio.sleep(0)  # the reload has started and waits for the store
        governance.invalidate("default")  # what it reads may predate the change
        await loading
        await governance.engine("default")
        await governance.engine("default")
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_execute)
    assert len(reads) == 2  # the reload in flight was not cached; the next one was
