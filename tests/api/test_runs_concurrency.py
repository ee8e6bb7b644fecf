"""Many run creations at once through the real app: none may hang on the store's pool.

The create transaction must do every store access through its own connection. Before, a cold
quota or policy cache opened a second pooled connection from inside it: with more concurrent
creations than pooled connections, every connection was held by a transaction waiting for
another one (on SQLite: waiting for the write lock its holder kept while it waited for a
connection), and all of them hung until the pool timeout.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import PrincipalKeys, agent_document
from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

CREATIONS = 100
RUNS_PER_DAY = 60


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Platform]]:
    """The app without its worker (runs stay ``QUEUED``, so the quota counts are exact)."""
    platform = Platform(settings, providers={"scripted": ScriptedModel([])})
    app = create_app(platform, run_worker=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(platform),
            timeout=None,
        ) as client,
    ):
        yield client, platform


@pytest.mark.timeout(240)
async def test_100_concurrent_run_creations_with_cold_caches_all_answer(
    app_client: tuple[httpx.AsyncClient, Platform],
) -> None:
    client, platform = app_client
    applied = await client.post("/v1/apply", json={"documents": [agent_document()]})
    assert applied.status_code == 200, applied.text
    quota = await client.put("/v1/quotas/runs_per_day", json={"limit": RUNS_PER_DAY})
    assert quota.status_code == 200, quota.text
    # Cold caches: the first creation of each must load quota limits and policies.
    platform.quotas.invalidate("default")
    platform.governance.invalidate("default")

    async def create(n: int) -> httpx.Response:
        return await client.post(
            "/v1/agents/repo-analyst/runs",
            json={"task": f"Task {n}: list the files.", "stage": "dev"},
        )

    responses = await asyncio.gather(*(create(n) for n in range(CREATIONS)))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 429}, [r.text for r in responses if r.status_code >= 300]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["code"] == "quota_exceeded"
        assert refused.headers["Retry-After"]
    if platform.store.dialect == "sqlite":
        # SQLite serialises writers and the check reads inside the write transaction.
        assert statuses == {201: RUNS_PER_DAY, 429: CREATIONS - RUNS_PER_DAY}
    else:
        # PostgreSQL: concurrent checks may overshoot (corral.tenancy._quotas says by how much).
        assert statuses[201] >= RUNS_PER_DAY
    listed = await client.get("/v1/runs", params={"limit": 500})
    assert len(listed.json()["items"]) == statuses[201]
