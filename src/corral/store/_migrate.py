"""Alembic migrations, run programmatically on the store's own async engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from corral.errors import CorralError
from corral.store._engine import Store

__all__ = ["current_revision", "ensure_migrated", "head_revision", "upgrade"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this version of Corral."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(store: Store) -> None:
    """Apply every pending migration, in one transaction per run of this function."""

    def run(connection: Any) -> None:
        config = _config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with store.engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(store: Store) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""

    def read(connection: Any) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with store.engine.connect() as connection:
        return await connection.run_sync(read)


async def ensure_migrated(store: Store) -> None:
    """Raise unless the database is at the head revision.

    Raises:
        CorralError: ``code="store_not_migrated"`` with the command that fixes it.
    """
    current, head = await current_revision(store), head_revision()
    if current != head:
        raise CorralError(
            f"The database at {store.engine.url.render_as_string(hide_password=True)} is at "
            f"revision {current!r}, this Corral needs {head!r}; run `corral db upgrade`.",
            code="store_not_migrated",
        )
