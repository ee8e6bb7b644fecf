"""Governance.engine: one reload of a tenant's policies per cache miss, shared by its callers.

The single-flight mechanics are tested in tests/test_singleflight.py; these prove the wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import PlatformFactory, concurrent_reloads, statements_reading
from corral.store import Scope


async def test_concurrent_callers_share_one_reload_of_a_tenants_engine(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    governance = platform.governance
    with statements_reading(platform, "policy_versions") as reads:
        first, both = await concurrent_reloads(governance.invalidate, governance.engine)
    assert len({id(engine) for engine in first}) == 1
    assert all(engine is first[0] for engine in both)  # same (default) policies: one engine
    assert len(reads) == 3  # one per tenant and cache miss, not one per caller


async def test_an_engine_invalidated_during_its_reload_is_not_cached(
    make_platform: PlatformFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = await make_platform()
    governance = platform.governance
    store_read = governance.store.read
    entered, release = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def gated_read(scope: Scope) -> AsyncIterator[AsyncSession]:
        entered.set()
        await release.wait()  # stays set: later reads pass straight through
        async with store_read(scope) as session:
            yield session

    monkeypatch.setattr(governance.store, "read", gated_read)
    with statements_reading(platform, "policy_versions") as reads:
        governance.invalidate("default")
        loading = asyncio.ensure_future(governance.engine("default"))
        await entered.wait()  # the reload has started and waits for the store
        governance.invalidate("default")  # what it reads may predate the change
        release.set()
        await loading
        await governance.engine("default")
        await governance.engine("default")
    assert len(reads) == 2  # the reload in flight was not cached; the next one was
