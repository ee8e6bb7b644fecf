"""Alembic migrations, run programmatically on the store's own async engine.

Alembic (with Mako and Pygments, about 7 MB resident) is imported only by `upgrade`: a worker
checks its database's revision at start with plain SQL and the migration files' text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from corral.errors import CorralError
from corral.store._engine import Store

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["current_revision", "ensure_migrated", "head_revision", "upgrade"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_VERSION_TABLE = "alembic_version"  # alembic's default, which env.py keeps
_REVISION = re.compile(r"^revision(?:\s*:[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"^down_revision(?:\s*:[^=]*)?=\s*(?:None|['\"]([^'\"]+)['\"])", re.MULTILINE
)


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


@functools.cache
def head_revision() -> str:
    """The newest migration revision shipped with this version of Corral.

    Read from the ``revision`` and ``down_revision`` lines of ``migrations/versions/*.py``
    (the one revision no other revises), without importing alembic.
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (_MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        assert revision is not None and down is not None, path
        revisions.add(revision.group(1))
        if down.group(1) is not None:
            revised.add(down.group(1))
    heads = revisions - revised
    assert len(heads) == 1, f"the migrations have {len(heads)} heads: {sorted(heads)}"
    return heads.pop()


async def upgrade(store: Store) -> None:
    """Apply every pending migration, in one transaction per run of this function.

    A database already at the head revision is left as it is without importing alembic (the
    embedded store's `corral up` upgrades at every start).
    """
    if await current_revision(store) == head_revision():
        return

    def run(connection: Any) -> None:
        from alembic import command

        config = _config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with store.engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(store: Store) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""

    def read(connection: Any) -> str | None:
        if not sa.inspect(connection).has_table(_VERSION_TABLE):
            return None
        rows = connection.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).all()
        if len(rows) > 1:  # alembic's MigrationContext refuses this too
            raise CorralError(
                f"The database has {len(rows)} migration heads: {sorted(r[0] for r in rows)}.",
                code="store_not_migrated",
            )
        return str(rows[0][0]) if rows else None

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
