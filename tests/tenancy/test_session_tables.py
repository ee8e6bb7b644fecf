"""The portal session tables are what migration 0020 made."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from corral.store import Base

_TABLES = ("session_revocations", "session_cutoffs")


async def test_the_session_tables_are_what_the_migration_made(make_platform: Any) -> None:
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [d for d in found if any(f"'{table}'" in d for table in _TABLES)]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
