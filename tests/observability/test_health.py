"""Readiness (``GET /readyz``, :meth:`Platform.readiness`) and liveness (``GET /healthz``).

Each check is broken for real: the database file removed, the database dropped, the migration
revision behind, a breaker opened by failures, a disk threshold no disk meets, a master key
missing where it must be configured.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import POSTGRES_URL
from corral.api import create_app
from corral.observability import Readiness
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

CHECKS = ["store", "migrations", "local_model", "redis", "disk", "master_key", "mcp_upstreams"]


def uncached(settings: Settings, **health: Any) -> Settings:
    """``settings`` with readiness answers never reused (each call runs the checks)."""
    return settings.model_copy(
        update={"health": settings.health.model_copy(update={"cache_seconds": 0, **health})}
    )


def keyed(settings: Settings) -> Settings:
    """``settings`` with a secrets master key (a PostgreSQL store needs one configured)."""
    key = base64.b64encode(os.urandom(32)).decode()
    secrets = settings.secrets.model_copy(update={"master_key": SecretStr(key)})
    return settings.model_copy(update={"secrets": secrets})


def status_of(readiness: Readiness) -> dict[str, str]:
    return {check.name: check.status for check in readiness.checks}


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    platform = Platform(settings, providers={"scripted": ScriptedModel([])})
    app = create_app(platform, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral")
    try:
        yield platform, client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_a_started_platform_is_ready_and_readyz_says_why(settings: Settings) -> None:
    async with served(keyed(uncached(settings))) as (_platform, client):
        response = await client.get("/readyz")  # no credentials: public
        assert response.status_code == 200, response.text
        body = response.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert list(body["checks"]) == CHECKS
    statuses = {name: check["status"] for name, check in body["checks"].items()}
    assert statuses == {
        "store": "ok",
        "migrations": "ok",
        "local_model": "skipped",  # this process does not run the embedded model
        "redis": "skipped",
        "disk": "ok",
        "master_key": "ok",
        "mcp_upstreams": "ok",
    }
    assert "GiB free under CORRAL_HOME" in body["checks"]["disk"]["detail"]
    assert body["checks"]["master_key"]["detail"] == "the secrets master key is loaded"
    # Public: no path, URL or host.
    for leak in (str(settings.home), settings.store_url, "127.0.0.1", "postgresql+asyncpg"):
        assert leak not in response.text, leak


async def test_readyz_fails_when_the_embedded_model_did_not_start(
    settings: Settings, tmp_path: Path
) -> None:
    """A process that should run the embedded model but could not start it is not ready."""
    broken = keyed(uncached(settings)).model_copy(
        update={
            "local_model": settings.local_model.model_copy(
                update={"model_path": tmp_path / "nope.gguf"}
            )
        }
    )
    platform = Platform(broken, start_local_model=True)
    await platform.start()
    try:
        readiness = await platform.readiness()
    finally:
        await platform.close()
    assert not readiness.ready and status_of(readiness)["local_model"] == "fail"
    [check] = [c for c in readiness.checks if c.name == "local_model"]
    assert "--no-local-model" in check.detail and "logs" in check.detail


async def test_readyz_fails_when_migrations_lag(settings: Settings) -> None:
    async with served(keyed(uncached(settings))) as (platform, client):
        async with platform.store.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready" and body["failed"] == ["migrations"]
    detail = body["checks"]["migrations"]["detail"]
    assert "revision '0001'" in detail and "corral db upgrade" in detail
    assert body["checks"]["store"]["status"] == "ok"


async def test_readyz_fails_when_the_store_is_gone(settings: Settings, tmp_path: Path) -> None:
    """SQLite: the database file removed; PostgreSQL: the schema dropped under a live app."""
    async with served(keyed(uncached(settings))) as (platform, client):
        assert (await client.get("/readyz")).status_code == 200
        if platform.store.dialect == "sqlite":
            database = settings.sqlite_path
            assert database is not None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{database}{suffix}")
        else:
            schema = settings.store.postgres_schema
            admin = create_async_engine(POSTGRES_URL)
            async with admin.begin() as connection:
                await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            await admin.dispose()
        await platform.store.engine.dispose()  # pooled connections would still see the old file
        response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert "migrations" in body["failed"]
    assert "revision None" in body["checks"]["migrations"]["detail"]


async def test_readiness_fails_when_the_database_does_not_exist(
    settings: Settings, tmp_path: Path
) -> None:
    """A store URL naming a database that is not there (dropped, or never created)."""
    if settings.store_url.startswith("sqlite"):
        # A directory where the database file should be: SQLite cannot open it.
        (tmp_path / "not-a-file.db").mkdir()
        store: dict[str, Any] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'not-a-file.db'}"}
    else:
        missing = f"corral_dropped_{uuid.uuid4().hex[:8]}"
        store = {"url": POSTGRES_URL.rsplit("/", 1)[0] + f"/{missing}"}
    broken = keyed(uncached(Settings(home=settings.home, store=store), check_timeout_seconds=10))
    platform = Platform(broken)
    try:
        readiness = await platform.readiness()
    finally:
        await platform.close()
    assert not readiness.ready
    assert readiness.failed == ["store"]
    assert status_of(readiness)["migrations"] == "skipped"
    [store_check] = [c for c in readiness.checks if c.name == "store"]
    assert "CORRAL_STORE__URL" in store_check.detail
    assert url_free(store_check.detail, store["url"])


def url_free(detail: str, url: str) -> bool:
    return url not in detail and "not-a-file" not in detail and "corral_dropped" not in detail


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Platform]:
    platform = Platform(settings, providers={"scripted": ScriptedModel([])})
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


async def test_disk_threshold(settings: Settings) -> None:
    tight = keyed(uncached(settings, min_free_disk_mb=1 << 40))  # a million TiB
    async with started(tight) as platform:
        readiness = await platform.readiness()
    assert readiness.failed == ["disk"]
    [disk] = [c for c in readiness.checks if c.name == "disk"]
    assert "CORRAL_HEALTH__MIN_FREE_DISK_MB" in disk.detail


async def test_master_key_missing_where_it_must_be_configured(settings: Settings) -> None:
    async with started(uncached(settings)) as platform:
        readiness = await platform.readiness()
    [key] = [c for c in readiness.checks if c.name == "master_key"]
    if platform.store.dialect == "sqlite":  # the embedded store generates it at first use
        assert readiness.ready and key.status == "ok" and "generated" in key.detail
        return
    # No key configured and no key file: every replica must be given the same key.
    assert readiness.failed == ["master_key"]
    assert "CORRAL_SECRETS__MASTER_KEY" in key.detail


async def test_open_mcp_breakers_are_reported_and_shown_in_metrics(settings: Settings) -> None:
    from corral.observability import sample_value

    async with started(keyed(uncached(settings))) as platform:
        breakers = platform.tools.resilience.breakers
        upstream = f"mcp:flaky-{uuid.uuid4().hex[:6]}"
        await breakers.record_failure(upstream)
        readiness = await platform.readiness()
        assert status_of(readiness)["mcp_upstreams"] == "ok"  # one failure: still closed
        labels = {"kind": "tool", "name": upstream}
        assert sample_value("corral_circuit_breaker_state", {**labels, "state": "closed"}) == 1
        for _ in range(breakers.failure_threshold):
            await breakers.record_failure(upstream)
        readiness = await platform.readiness()
        assert readiness.ready  # a warning: one tenant's upstream is not this replica's fault
        [mcp] = [c for c in readiness.checks if c.name == "mcp_upstreams"]
        assert mcp.status == "warn" and "1 of 1" in mcp.detail
        assert upstream not in mcp.detail  # server names are tenants' data
        assert sample_value("corral_circuit_breaker_state", {**labels, "state": "open"}) == 1
        assert sample_value("corral_circuit_breaker_state", {**labels, "state": "closed"}) == 0
    # A closed platform's breakers are no longer shown.
    assert sample_value("corral_circuit_breaker_state", {**labels, "state": "open"}) == 0


async def test_redis_configured_but_unreachable_fails(settings: Settings) -> None:
    tools = settings.tools.model_copy(update={"rate_limit_storage_url": "redis://127.0.0.1:1"})
    async with started(keyed(uncached(settings)).model_copy(update={"tools": tools})) as platform:
        readiness = await platform.readiness()
    assert readiness.failed == ["redis"]
    [redis] = [c for c in readiness.checks if c.name == "redis"]
    assert "CORRAL_TOOLS__RATE_LIMIT_STORAGE_URL" in redis.detail
    assert "127.0.0.1" not in redis.detail


async def test_the_redis_check_reuses_one_client_per_process(settings: Settings) -> None:
    """Probing ``/readyz`` again and again opens no new Redis connection per probe."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    name = f"corral-readyz-{uuid.uuid4().hex[:12]}"  # tells this test's connections apart
    url = f"redis://127.0.0.1:6379/0?client_name={name}"
    tools = settings.tools.model_copy(update={"rate_limit_storage_url": url})
    observer = coredis.Redis(host="127.0.0.1", port=6379, decode_responses=True)

    async def connections() -> int:
        return sum(1 for client in await observer.client_list() if client.get("name") == name)

    async with started(keyed(uncached(settings)).model_copy(update={"tools": tools})) as platform:
        for _ in range(3):
            assert status_of(await platform.readiness())["redis"] == "ok"
        assert await connections() == 1
    observer.connection_pool.disconnect()


async def test_healthz_answers_without_the_store_readyz_does_not(
    settings: Settings, tmp_path: Path
) -> None:
    """Liveness does no I/O: it answers for a process whose store cannot even be opened."""
    (tmp_path / "not-a-file.db").mkdir()  # SQLite cannot open a directory
    store = {"url": f"sqlite+aiosqlite:///{tmp_path / 'not-a-file.db'}"}
    platform = Platform(uncached(Settings(home=settings.home, store=store)))
    app = create_app(platform, run_worker=False)  # no lifespan: the store is never opened
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
    await platform.close()
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert ready.status_code == 503 and "store" in ready.json()["failed"]


async def test_model_breakers_are_named_without_credentials_or_path(settings: Settings) -> None:
    from corral.observability import exposition, sample_value

    async with started(keyed(uncached(settings))) as platform:
        breakers = platform.models.breakers
        key = "openai|https://user:pa55word@llm.example.com:8443/v1/secret-path|gpt-x"
        for _ in range(breakers.failure_threshold):
            await breakers.record_failure(key)
        name = "openai|https://llm.example.com:8443|gpt-x"
        labels = {"kind": "model", "name": name, "state": "open"}
        assert sample_value("corral_circuit_breaker_state", labels) == 1
        text = exposition().decode()
    assert "pa55word" not in text and "secret-path" not in text
