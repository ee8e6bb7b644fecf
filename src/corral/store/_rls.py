"""PostgreSQL row-level security for tenant-owned tables (migrations call it).

A row is visible when its ``tenant_id`` is the transaction's scope (the ``corral.tenant_id``
setting :class:`corral.store.Store` sets at the start of every transaction), when the scope is
the system scope ``*``, or, for reads only, when the row is platform-wide (``tenant_id = '*'``,
such as a kill switch over every tenant). A connection that never set the scope sees nothing.
``FORCE`` binds the table owner too; superusers and ``BYPASSRLS`` roles are never bound, so
Corral must not connect as one (https://www.postgresql.org/docs/current/ddl-rowsecurity.html).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = ["enable_row_level_security"]

USING = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*' OR tenant_id = '*'"
)
CHECK = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)


def enable_row_level_security(connection: Any) -> list[str]:
    """Add the ``tenant_isolation`` policy to every table with ``tenant_id`` that lacks one.

    A no-op on SQLite (one file per deployment; the store's ORM scope is its isolation).

    Returns:
        The tables changed.
    """
    if connection.dialect.name != "postgresql":
        return []
    inspector = sa.inspect(connection)
    changed = []
    for table in inspector.get_table_names():
        if "tenant_id" not in {c["name"] for c in inspector.get_columns(table)}:
            continue
        has_policy = connection.execute(
            sa.text(
                "SELECT 1 FROM pg_policies WHERE schemaname = current_schema() "
                "AND tablename = :t AND policyname = 'tenant_isolation'"
            ),
            {"t": table},
        ).first()
        if has_policy:
            continue
        connection.execute(sa.text(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY'))
        connection.execute(sa.text(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY'))
        connection.execute(
            sa.text(
                f'CREATE POLICY tenant_isolation ON "{table}" USING ({USING}) WITH CHECK ({CHECK})'
            )
        )
        changed.append(table)
    return changed
