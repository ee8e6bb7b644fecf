"""Tenant isolation below the API: the store's scope (both databases) and PostgreSQL RLS.

The ORM scope (``store.read(tenant)`` adds ``tenant_id = tenant`` to every tenant-owned
entity) is checked on SQLite and PostgreSQL. Row-level security is checked on PostgreSQL as a
role that is neither superuser nor ``BYPASSRLS`` (superusers are never bound by policies, and the
test suite itself connects as one), with raw SQL that carries no tenant filter at all.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from conftest import POSTGRES_URL, PlatformFactory, agent_document
from corral.contracts import parse_document
from corral.platform import Platform
from corral.registry import apply_documents
from corral.registry._tables import AgentRow
from corral.runtime import create_run
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import SYSTEM, MissingTenantScope, Store, new_id
from corral.tenancy import QuotaRow, create_tenant

A, B = "default", "team-b"
RLS_ROLE = "corral_rls_test"


@dataclass
class Seeded:
    platform: Platform
    runs: dict[str, set[str]]
    """Run ids by tenant."""


async def seed(platform: Platform) -> Seeded:
    """Two tenants, each with an agent, runs and a quota; A has two runs, B one."""
    await create_tenant(platform.store, tenant_id=B, display_name=None, actor="test")
    runs: dict[str, set[str]] = {A: set(), B: set()}
    for tenant, count in ((A, 2), (B, 1)):
        async with platform.store.transaction(tenant) as session:
            await apply_documents(
                session,
                [parse_document(agent_document(f"agent-of-{tenant}"))],
                tenant_id=tenant,
                actor="user:test",
            )
            for n in range(count):
                run = await create_run(
                    session,
                    tenant_id=tenant,
                    agent_name=f"agent-of-{tenant}",
                    task=f"task {n} of {tenant}",
                    requested_by="user:test",
                )
                runs[tenant].add(run.id)
            session.add(
                QuotaRow(
                    id=new_id("quota"),
                    tenant_id=tenant,
                    name="runs_per_day",
                    limit=10,
                    updated_by="user:test",
                )
            )
    return Seeded(platform, runs)


@pytest.fixture
async def seeded(make_platform: PlatformFactory) -> Seeded:
    return await seed(await make_platform())


# --- the store's scope, on both databases ---------------------------------------------------------


async def test_a_session_without_a_tenant_scope_refuses_to_query_or_write(
    seeded: Seeded,
) -> None:
    store = seeded.platform.store
    async with store.sessions() as session:
        with pytest.raises(MissingTenantScope, match="without a tenant scope"):
            await session.execute(select(RunRow))
    async with store.sessions() as session:
        session.add(
            QuotaRow(id=new_id("quota"), tenant_id=B, name="x", limit=1, updated_by="user:x")
        )
        with pytest.raises(MissingTenantScope):
            await session.flush()
    # Neither an empty scope nor the system scope's spelling '*' opens a session.
    for scope in ("", "*"):
        with pytest.raises(MissingTenantScope):
            async with store.read(scope):
                pass
        with pytest.raises(MissingTenantScope):
            await store.run_sync(lambda _connection: None, scope)


async def test_orm_queries_without_a_where_clause_see_only_the_scope(seeded: Seeded) -> None:
    store, runs = seeded.platform.store, seeded.runs
    for tenant in (A, B):
        async with store.read(tenant) as session:
            assert set(await session.scalars(select(RunRow.id))) == runs[tenant]
            joined = await session.execute(
                select(RunRow.id, AgentRow.name).join(AgentRow, AgentRow.id == RunRow.agent_id)
            )
            assert {name for _, name in joined} == {f"agent-of-{tenant}"}
            other = next(iter(runs[B if tenant == A else A]))
            assert await session.get(RunRow, other) is None
            assert await session.scalar(select(sa.func.count()).select_from(RunRow)) == len(
                runs[tenant]
            )
    async with store.read(SYSTEM) as session:
        assert set(await session.scalars(select(RunRow.id))) == runs[A] | runs[B]


async def test_orm_updates_and_deletes_without_a_where_clause_stay_in_the_scope(
    seeded: Seeded,
) -> None:
    store = seeded.platform.store
    async with store.transaction(A) as session:
        await session.execute(update(RunRow).values(task="overwritten"))
        await session.execute(delete(QuotaRow))
    async with store.read(SYSTEM) as session:
        tasks = dict((await session.execute(select(RunRow.tenant_id, RunRow.task))).all())
        quotas = set(await session.scalars(select(QuotaRow.tenant_id)))
    assert tasks[A] == "overwritten" and tasks[B] == "task 0 of team-b"
    assert quotas == {B}


async def test_writing_another_tenants_row_in_a_scoped_session_is_refused(
    seeded: Seeded,
) -> None:
    store = seeded.platform.store
    with pytest.raises(MissingTenantScope, match="of tenant 'team-b' written in a session of"):
        async with store.transaction(A) as session:
            session.add(
                QuotaRow(
                    id=new_id("quota"),
                    tenant_id=B,
                    name="concurrent_runs",
                    limit=0,
                    updated_by="user:mallory",
                )
            )
    async with store.read(B) as session:
        assert set(await session.scalars(select(QuotaRow.name))) == {"runs_per_day"}


# --- PostgreSQL row-level security, below the application -----------------------------------------


@pytest.fixture
async def rls_engine(seeded: Seeded, settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the test schema as a role without SUPERUSER or BYPASSRLS."""
    if seeded.platform.store.dialect != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    schema = settings.store.postgres_schema
    assert schema
    admin = create_async_engine(POSTGRES_URL, poolclass=NullPool)
    async with admin.begin() as conn:
        await conn.execute(
            sa.text(
                "DO $$ BEGIN "
                f"CREATE ROLE {RLS_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
        )
        flags = (
            await conn.execute(
                sa.text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
                {"r": RLS_ROLE},
            )
        ).one()
        assert tuple(flags) == (False, False), "the RLS test role must not bypass RLS"
        await conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO {RLS_ROLE}'))
        await conn.execute(
            sa.text(
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" '
                f"TO {RLS_ROLE}"
            )
        )
    await admin.dispose()
    url = make_url(POSTGRES_URL).set(username=RLS_ROLE, password=None)
    engine = create_async_engine(
        url,
        poolclass=NullPool,  # a fresh connection per test step: no setting carries over
        connect_args={"server_settings": {"search_path": schema}},
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def _run_ids(engine: AsyncEngine, setting: str | None) -> set[tuple[str, str]]:
    async with engine.begin() as conn:
        if setting is not None:
            await conn.execute(
                sa.text("SELECT set_config('corral.tenant_id', :s, false)"), {"s": setting}
            )
        rows = await conn.execute(sa.text("SELECT id, tenant_id FROM runs"))
        return {(r.id, r.tenant_id) for r in rows}


async def test_raw_sql_as_a_non_superuser_sees_only_the_scoped_tenant(
    seeded: Seeded, rls_engine: AsyncEngine
) -> None:
    runs = seeded.runs
    every = {(r, t) for t in (A, B) for r in runs[t]}
    assert await _run_ids(rls_engine, A) == {(r, A) for r in runs[A]}
    assert await _run_ids(rls_engine, B) == {(r, B) for r in runs[B]}
    assert await _run_ids(rls_engine, None) == set()  # no scope: nothing
    assert await _run_ids(rls_engine, "") == set()
    assert await _run_ids(rls_engine, "no-such-tenant") == set()
    assert await _run_ids(rls_engine, "*") == every  # the system scope
    # SQL injection-shaped scopes are just strings compared with tenant_id.
    assert await _run_ids(rls_engine, "default' OR '1'='1") == set()


async def test_every_tenant_table_is_isolated_for_the_non_superuser(
    seeded: Seeded, rls_engine: AsyncEngine, settings: Settings
) -> None:
    async with rls_engine.begin() as conn:
        tables = [
            row.table_name
            for row in await conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = :s AND column_name = 'tenant_id' ORDER BY table_name"
                ),
                {"s": settings.store.postgres_schema},
            )
        ]
        secured = {
            row.relname: (row.relrowsecurity, row.relforcerowsecurity)
            for row in await conn.execute(
                sa.text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"
                ),
                {"s": settings.store.postgres_schema},
            )
        }
        policies = {
            row.tablename
            for row in await conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_policies WHERE schemaname = :s "
                    "AND policyname = 'tenant_isolation'"
                ),
                {"s": settings.store.postgres_schema},
            )
        }
    assert {"runs", "agents", "audit_events", "api_keys", "quotas", "tenants"} <= set(tables)
    unsecured = [t for t in tables if secured.get(t) != (True, True) or t not in policies]
    assert unsecured == []
    # With A's scope, no table yields a row of another tenant (platform-wide '*' rows aside).
    leaked: dict[str, int] = {}
    b_rows: dict[str, int] = {}
    for table in tables:
        count = f"SELECT count(*) FROM \"{table}\" WHERE tenant_id NOT IN ('{A}', '*')"
        async with rls_engine.begin() as conn:
            await conn.execute(sa.text("SELECT set_config('corral.tenant_id', :s, true)"), {"s": A})
            leaked[table] = int((await conn.execute(sa.text(count))).scalar_one())
        async with rls_engine.begin() as conn:
            await conn.execute(sa.text("SELECT set_config('corral.tenant_id', '*', true)"))
            b_rows[table] = int((await conn.execute(sa.text(count))).scalar_one())
    assert {t: n for t, n in leaked.items() if n} == {}
    # ...while B does have rows in them (the check above is not vacuous).
    assert all(b_rows[t] > 0 for t in ("runs", "agents", "agent_versions", "audit_events")), b_rows


async def test_rls_refuses_writes_across_tenants_for_the_non_superuser(
    seeded: Seeded, rls_engine: AsyncEngine
) -> None:
    async def in_scope(scope: str, sql: str) -> int:
        async with rls_engine.begin() as conn:
            await conn.execute(
                sa.text("SELECT set_config('corral.tenant_id', :s, true)"), {"s": scope}
            )
            result = await conn.execute(sa.text(sql))
            return int(result.rowcount)

    # Updates and deletes without a WHERE clause touch the scope's rows only.
    assert await in_scope(A, "UPDATE runs SET task = 'overwritten'") == 2
    assert await in_scope(A, "DELETE FROM quotas") == 1
    # Inserting or moving a row into another tenant violates the policy's WITH CHECK.
    insert = (
        'INSERT INTO quotas (id, tenant_id, name, "limit", updated_by, updated_at) '
        f"VALUES ('{uuid.uuid4().hex}', '{B}', 'concurrent_runs', 0, 'x', now())"
    )
    with pytest.raises(DBAPIError, match="row-level security"):
        await in_scope(A, insert)
    with pytest.raises(DBAPIError, match="row-level security"):
        await in_scope(A, f"UPDATE runs SET tenant_id = '{B}'")
    async with rls_engine.begin() as conn:
        await conn.execute(sa.text("SELECT set_config('corral.tenant_id', '*', true)"))
        tasks = dict((await conn.execute(sa.text("SELECT tenant_id, task FROM runs"))).all())
        quotas = set((await conn.execute(sa.text("SELECT tenant_id FROM quotas"))).scalars())
    assert tasks[B] == "task 0 of team-b" and quotas == {B}


async def test_the_store_itself_sets_the_scope_rls_enforces(
    seeded: Seeded, rls_engine: AsyncEngine, settings: Settings
) -> None:
    """A Store connected as the non-superuser: raw SQL inside its sessions is still scoped."""
    url = make_url(POSTGRES_URL).set(username=RLS_ROLE, password=None)
    store = Store(
        url.render_as_string(hide_password=False),
        connect_args={"server_settings": {"search_path": settings.store.postgres_schema}},
    )
    raw = sa.text("SELECT id FROM runs")
    try:
        for tenant in (A, B):
            async with store.read(tenant) as session:
                assert set((await session.execute(raw)).scalars()) == seeded.runs[tenant]
            ids = await store.run_sync(lambda conn: set(conn.execute(raw).scalars()), tenant)
            assert ids == seeded.runs[tenant]
        async with store.read(SYSTEM) as session:
            assert set((await session.execute(raw)).scalars()) == seeded.runs[A] | seeded.runs[B]
        # The scope is transaction-local: a pooled connection does not carry it over.
        async with store.read(A) as session:
            await session.execute(raw)
        async with store.engine.connect() as conn:
            assert set((await conn.execute(raw)).scalars()) == set()
    finally:
        await store.dispose()
