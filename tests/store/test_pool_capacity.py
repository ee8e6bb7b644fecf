"""A process refuses at start a pool configuration PostgreSQL's ``max_connections`` cannot serve."""

from __future__ import annotations

import pytest

from corral.errors import CorralError
from corral.platform import Platform
from corral.settings import Settings
from corral.store import check_pool_capacity


def _with(settings: Settings, **store: int) -> Settings:
    return settings.model_copy(update={"store": settings.store.model_copy(update=store)})


async def test_pools_that_cannot_fit_max_connections_are_refused_at_start(
    settings: Settings,
) -> None:
    # The configuration that exhausted a default server: 20 + 20 per process, 3 workers + API.
    platform = Platform(_with(settings, pool_size=20, max_overflow=20, processes=4))
    try:
        if platform.store.dialect != "postgresql":
            assert await check_pool_capacity(platform.store, processes=4) is None
            await platform.start()  # SQLite: one file, no connection limit to check
            return
        with pytest.raises(CorralError) as refused:
            await platform.start()
    finally:
        await platform.close()
    error = refused.value
    assert error.code == "store_pool_too_large"
    assert "4 processes x (pool_size 20 + max_overflow 20) = 160 connections" in error.message
    for setting in ("CORRAL_STORE__POOL_SIZE", "CORRAL_STORE__MAX_OVERFLOW", "max_connections"):
        assert setting in error.message


async def test_the_shipped_defaults_fit_three_workers_of_64_runs_and_an_api(
    settings: Settings,
) -> None:
    defaults = Settings(home=settings.home, store={"url": settings.store.url})
    assert defaults.store.pool_size + defaults.store.max_overflow <= 15
    shipped = _with(
        settings,
        pool_size=defaults.store.pool_size,
        max_overflow=defaults.store.max_overflow,
        processes=4,
    )
    shipped = shipped.model_copy(
        update={"runtime": shipped.runtime.model_copy(update={"worker_concurrency": 64})}
    )
    platform = Platform(shipped)
    try:
        await platform.start()
        budget = await check_pool_capacity(platform.store, processes=4)
    finally:
        await platform.close()
    if platform.store.dialect == "postgresql":
        assert budget is not None
        assert budget.needed <= budget.available
        assert budget.needed <= 100 - 3  # a default server: 100 less 3 superuser-reserved
