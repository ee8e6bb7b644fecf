"""Migration 0021: the overview's covering indexes, up and down, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from corral.store import Base
from corral.store._migrate import _config

_TABLES = ("runs", "tool_calls", "model_calls")
_NEW = {
    "runs": {"ix_runs_tenant_created_status", "ix_runs_tenant_status"},
    "tool_calls": {"ix_tool_calls_tenant_started"},
    "model_calls": {"ix_model_calls_tenant_day_cost"},
}
_REPLACED = {"runs": {"ix_runs_tenant_created"}, "model_calls": {"ix_model_calls_tenant_day"}}


def _differences(connection: Connection) -> list[str]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
    return [d for d in found if any(f"'{table}'" in d for table in _TABLES)]


def _indexes(connection: Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(connection)
    return {t: {str(i["name"]) for i in inspector.get_indexes(t)} for t in _TABLES}


def _migrate(connection: Connection, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    if revision == "head":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def test_the_overview_indexes_are_what_migration_0021_makes_and_undoes(
    make_platform: Any,
) -> None:
    platform = await make_platform()
    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        made = await connection.run_sync(_indexes)
    for table, names in _NEW.items():
        assert names <= made[table]
    for table, names in _REPLACED.items():
        assert not names & made[table]

    async with platform.store.engine.begin() as connection:
        await connection.run_sync(_migrate, "0020")
    async with platform.store.engine.connect() as connection:
        undone = await connection.run_sync(_indexes)
    for table, names in _NEW.items():
        assert not names & undone[table]
    for table, names in _REPLACED.items():
        assert names <= undone[table]

    async with platform.store.engine.begin() as connection:
        await connection.run_sync(_migrate, "head")
    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
