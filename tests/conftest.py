"""Shared fixtures: a started Platform on SQLite and on PostgreSQL, an API client, a live server.

PostgreSQL tests use ``CORRAL_TEST_POSTGRES_URL`` (default: the local server on 127.0.0.1:5432,
database ``test``), each test in a schema of its own. When the server is unreachable they skip,
unless ``CORRAL_TEST_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from corral.api import create_app
from corral.contracts import parse_document
from corral.gateway.models import ModelProvider
from corral.observability import configure_logging
from corral.platform import Platform
from corral.registry import apply_documents
from corral.settings import LogSettings, Settings, StoreSettings, get_settings
from corral.store import SYSTEM
from corral.tenancy import ROLES, issue_key
from corral.testing import serve_in_thread

T = TypeVar("T")

POSTGRES_URL = os.environ.get(
    "CORRAL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("CORRAL_TEST_REQUIRE_POSTGRES") == "1"
APP_ROLE = "corral_app"
APP_POSTGRES_URL = str(make_url(POSTGRES_URL).set(username=APP_ROLE, password=None))

_STDLIB_ASYNCIO_RUN = asyncio.run


@pytest.fixture(autouse=True)
def _asyncio_left_unpatched() -> Iterator[None]:
    """Fail the test after which ``asyncio.run`` is no longer the standard library's.

    ``nest_asyncio`` (applied by, for one, ``inspect_ai``'s sync readers when called under a
    running loop) patches asyncio for the rest of the process: its ``asyncio.run`` never closes
    the loops it makes, and the garbage collector then fails some later, unrelated test with
    ``ResourceWarning: unclosed event loop``. Use the library's async API instead.
    """
    yield
    assert asyncio.run is _STDLIB_ASYNCIO_RUN, (
        "this test let a library patch asyncio globally (nest_asyncio?); "
        "call its async API from async tests"
    )


LLM_TIMEOUT_SECONDS = 600
"""The per-test timeout of a test that runs the embedded model and sets none of its own: its
decoding takes 30-60 s on a quiet 2-core machine and several times that under load (one took
over the suite's 120 s in a helper's run)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("llm") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(LLM_TIMEOUT_SECONDS))


_CREATE_APP_ROLE = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
    CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_settings(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreSettings]:
    """Store settings for a fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'corral.db'}")
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL)
    try:
        async with admin.begin() as conn:
            # Corral connects as a role that row-level security binds (superusers bypass it),
            # owning its schema, as a production deployment should.
            await conn.execute(text(_CREATE_APP_ROLE))
            await conn.execute(text(f'CREATE SCHEMA "{schema}" AUTHORIZATION {APP_ROLE}'))
    except OSError as exc:
        await admin.dispose()
        if REQUIRE_POSTGRES:
            raise
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}")
    try:
        yield StoreSettings(url=APP_POSTGRES_URL, postgres_schema=schema)
    finally:
        try:
            await _drop_schema(admin, schema)
        finally:
            await admin.dispose()


async def _drop_schema(admin: Any, schema: str) -> None:
    """Drop a test's schema; retried when PostgreSQL picks the drop as a deadlock's victim.

    A closed platform's last background pass (the audit sequencer's, which stops at the next
    pass once the engine is disposed) may still hold a table lock in the schema; DROP ... CASCADE
    locks the tables in another order, and PostgreSQL aborts one of the two.
    """
    for attempt in range(5):
        try:
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            return
        except DBAPIError as exc:
            if "deadlock" not in str(exc) or attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


@pytest.fixture
def settings(tmp_path: Path, store_settings: StoreSettings) -> Settings:
    """Settings on a temporary home and the parametrised store, fast worker polling.

    ``tmp_path`` is a workspace root, so tests may point runs at directories they make there.
    """
    return Settings(
        home=tmp_path / "home",
        store=store_settings,
        runtime={"poll_interval_seconds": 0.02, "lease_seconds": 30},
        workspaces={"roots": [tmp_path]},
    )


PlatformFactory = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def make_platform(settings: Settings) -> AsyncIterator[PlatformFactory]:
    """``await make_platform(scripted=ScriptedModel(...))``: a started platform, closed after."""
    started: list[Platform] = []

    async def make(**providers: ModelProvider) -> Platform:
        platform = Platform(settings, providers=providers)
        await platform.start()
        started.append(platform)
        return platform

    yield make
    for platform in started:
        await platform.close()


def agent_document(name: str = "repo-analyst", **spec: Any) -> dict[str, Any]:
    """An Agent document using the scripted model and the fs tools; ``spec`` overrides."""
    body: dict[str, Any] = {
        "description": "Answers questions about a codebase.",
        "owner": "platform-team",
        "instructions": "Answer using the fs tools.",
        "model": {"default": "scripted/test"},
        "tools": {"allowed": ["fs.*"]},
    }
    body.update(spec)
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": body,
    }


async def register(platform: Platform, *documents: dict[str, Any]) -> None:
    """Apply documents directly through the registry (as the default tenant's admin)."""
    async with platform.store.transaction("default") as session:
        await apply_documents(
            session,
            [parse_document(d) for d in documents],
            tenant_id="default",
            actor="user:test",
        )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A small source tree to point runs at."""
    root = tmp_path / "workspace"
    (root / "pkg").mkdir(parents=True)
    (root / "README.md").write_text("# Demo\n")
    (root / "pkg" / "core.py").write_text("def answer():\n    return 42\n")
    return root


class PrincipalKeys(httpx.Auth):
    """Authenticates test requests with real API keys.

    A request's ``X-Corral-Principal`` header (default ``user:local-admin``) picks the
    principal; a key is issued for it once, with the roles ``governance.roles`` gives it in the
    settings (the local admin holds every role). A request that sets ``Authorization`` itself is
    sent as it is.
    """

    def __init__(self, platform: Platform, tenant_id: str = "default") -> None:
        self.platform = platform
        self.tenant_id = tenant_id
        self.keys: dict[str, str] = {}

    async def key(self, principal: str) -> str:
        if principal not in self.keys:
            if principal == "user:local-admin":
                roles = list(ROLES)
            else:
                roles = self.platform.settings.governance.roles.get(principal, [])
            kind = principal.partition(":")[0]
            self.keys[principal] = await issue_key(
                self.platform.store,
                server_secret=self.platform.identity.server_secret,
                tenant_id=self.tenant_id,
                principal=principal,
                roles=roles,
                name=f"test-{principal.replace(':', '-')}"[:100],
                kind=kind if kind in ("service", "agent") else "user",
            )
        return self.keys[principal]

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        principal = request.headers.pop("X-Corral-Principal", "user:local-admin")
        if "Authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {await self.key(principal)}"
        yield request


@contextlib.asynccontextmanager
async def superuser_transaction(platform: Platform) -> AsyncIterator[Any]:
    """A transaction that changes stored rows behind the application's back.

    On PostgreSQL it connects as the superuser of ``CORRAL_TEST_POSTGRES_URL`` (row-level
    security does not bind it) in the platform's schema, with ``session_replication_role =
    replica``: triggers such as the audit log's append-only one do not fire. On SQLite it is a
    system-scoped transaction of the store. Yields something with ``await .execute(statement)``.
    """
    store = platform.settings.store
    if platform.store.dialect != "postgresql":
        async with platform.store.transaction(SYSTEM) as session:
            yield session
        return
    engine = create_async_engine(
        POSTGRES_URL, connect_args={"server_settings": {"search_path": store.postgres_schema}}
    )
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            yield connection
    finally:
        await engine.dispose()


@contextlib.contextmanager
def statements_reading(platform: Platform, table: str) -> Iterator[list[str]]:
    """The SQL statements reading ``FROM {table}`` that the platform's store runs in the block.

    Yields the list they are appended to as they run (on every connection of the store's pool).
    """
    sync_engine = platform.store.engine.sync_engine
    fragment = f"FROM {table}"
    seen: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if fragment in statement:
            seen.append(statement)

    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_execute)


async def concurrent_reloads(
    invalidate: Callable[[str], None], load: Callable[[str], Awaitable[T]]
) -> tuple[list[T], list[T]]:
    """Callers of a per-tenant cache racing on its misses (the single-flight wiring tests).

    Invalidates ``default`` and loads it from 20 concurrent callers; then invalidates
    ``default`` and ``team-x`` and loads each from 5 concurrent callers. A single-flight cache
    reads the store 3 times in all: once per tenant and miss.

    Returns:
        ``(the 20 values of default, the 5 of default followed by the 5 of team-x)``.
    """
    invalidate("default")
    first = await asyncio.gather(*(load("default") for _ in range(20)))
    invalidate("default")
    invalidate("team-x")
    both = await asyncio.gather(*(load(t) for t in ("default", "team-x") for _ in range(5)))
    return first, both


def key_for(
    settings: Settings,
    principal: str,
    roles: list[str] | None = None,
    *,
    tenant_id: str = "default",
) -> str:
    """A real API key for ``principal``, issued into the store of a server in another thread.

    For tests driving a live server (:func:`corral.testing.serve_in_thread`) whose event loop
    the test cannot use: the key is written through a platform of its own on ``settings``
    (same database, same server secret). ``roles`` default to those ``governance.roles``
    gives the principal.
    """
    if roles is None:
        roles = settings.governance.roles.get(principal, [])
    kind = principal.partition(":")[0]

    async def issue() -> str:
        platform = Platform(settings)
        try:
            return await issue_key(
                platform.store,
                server_secret=platform.identity.server_secret,
                tenant_id=tenant_id,
                principal=principal,
                roles=list(roles),
                name=f"test-{principal.replace(':', '-')}"[:100],
                kind=kind if kind in ("service", "agent") else "user",
            )
        finally:
            await platform.close()

    return asyncio.run(issue())


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """``client = await api(scripted=ScriptedModel(...))``: the app with its lifespan running."""
    contexts: list[Any] = []

    async def make(**providers: ModelProvider) -> httpx.AsyncClient:
        app = create_app(Platform(settings, providers=providers))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(app.state.platform),
        )
        contexts.append((client, lifespan))
        return client

    yield make
    for client, lifespan in reversed(contexts):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


class CliServer(Protocol):
    """The ``cli_server`` fixture's function."""

    def __call__(self, app: FastAPI, *, home: Path | None = None) -> str: ...


@pytest.fixture
def cli_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliServer]:
    """``url = cli_server(app, home=settings.home)``: serve ``app`` until the test ends, the CLI
    pointed at it.

    uvicorn serves it in a thread (:func:`corral.testing.serve_in_thread`); ``CORRAL_API__URL``
    names it, ``CORRAL_API_KEY`` and ``CORRAL_TENANT`` are unset, and ``CORRAL_HOME`` is
    ``home`` when given: an app made with ``local_admin=True`` writes the local admin's key
    there, which the CLI then sends (as after ``corral up``). Settings are re-read after.
    """
    with contextlib.ExitStack() as served:

        def serve(app: FastAPI, *, home: Path | None = None) -> str:
            monkeypatch.delenv("CORRAL_API_KEY", raising=False)
            monkeypatch.delenv("CORRAL_TENANT", raising=False)
            if home is not None:
                monkeypatch.setenv("CORRAL_HOME", str(home))
            url = served.enter_context(serve_in_thread(app))
            monkeypatch.setenv("CORRAL_API__URL", url)
            get_settings.cache_clear()
            return url

        yield serve
    get_settings.cache_clear()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log line of the test as production writes it (structlog JSON), at DEBUG.

    The root logger's handlers and level and uvicorn's loggers are restored afterwards.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    named = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(logger.handlers[:], logger.propagate) for logger in named]
    stream = io.StringIO()
    configure_logging(LogSettings(format="json", level="DEBUG"), stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for logger, (kept, propagate) in zip(named, saved, strict=True):
            logger.handlers[:] = kept
            logger.propagate = propagate


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON lines written so far."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
