"""Connection budget: refuse at start a pool that PostgreSQL's ``max_connections`` cannot serve.

Every Corral process (API replica or worker) keeps its own pool. When their pools together can
open more connections than the server accepts, a burst makes some of them fail with ``too many
clients`` mid-run; it is cheaper to refuse the configuration before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from corral.errors import CorralError
from corral.store._engine import Store

__all__ = ["ConnectionBudget", "check_pool_capacity"]

_SETTINGS = text(
    "SELECT name, setting FROM pg_settings WHERE name IN "
    "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
)
"""``reserved_connections`` exists from PostgreSQL 16 on; older servers simply lack the row."""


@dataclass(frozen=True)
class ConnectionBudget:
    """What the server accepts and what the configured pools may open.

    Attributes:
        max_connections: The server's ``max_connections``.
        reserved: Connections only superusers (and, from PostgreSQL 16, roles with
            ``pg_use_reserved_connections``) may use.
        per_process: ``pool_size + max_overflow`` of one process.
        processes: Processes sharing the database (setting ``store.processes``).
    """

    max_connections: int
    reserved: int
    per_process: int
    processes: int

    @property
    def available(self) -> int:
        """Connections ordinary roles may open."""
        return self.max_connections - self.reserved

    @property
    def needed(self) -> int:
        """Connections all processes' pools may open at their fullest."""
        return self.per_process * self.processes


async def check_pool_capacity(store: Store, *, processes: int) -> ConnectionBudget | None:
    """Refuse a pool configuration that cannot fit the server's connection limit.

    Args:
        store: The store (its ``pool_size`` and ``max_overflow`` are the configured ones).
        processes: Corral processes sharing the database, this one included.

    Returns:
        The budget that was checked; ``None`` on SQLite (one file, no connection limit).

    Raises:
        CorralError: ``code="store_pool_too_large"`` when ``processes x (pool_size +
            max_overflow)`` exceeds ``max_connections`` less the reserved connections; the
            message names the settings to change.
    """
    if store.dialect != "postgresql":
        return None
    async with store.engine.connect() as connection:
        result = await connection.execute(_SETTINGS)
        rows: dict[str, str] = {row.name: row.setting for row in result}
    budget = ConnectionBudget(
        max_connections=int(rows["max_connections"]),
        reserved=int(rows.get("superuser_reserved_connections", 0))
        + int(rows.get("reserved_connections", 0)),
        per_process=store.pool_size + store.max_overflow,
        processes=processes,
    )
    if budget.needed > budget.available:
        fitting = max(budget.available // processes, 1)
        raise CorralError(
            f"The connection pools cannot fit PostgreSQL's limit: {processes} processes x "
            f"(pool_size {store.pool_size} + max_overflow {store.max_overflow}) = "
            f"{budget.needed} connections, but max_connections {budget.max_connections} less "
            f"{budget.reserved} reserved leaves {budget.available}. Lower "
            f"CORRAL_STORE__POOL_SIZE and CORRAL_STORE__MAX_OVERFLOW (together at most "
            f"{fitting} per process), set CORRAL_STORE__PROCESSES to the number of API "
            "replicas plus workers actually sharing the database, or raise max_connections "
            "in postgresql.conf. A worker needs no connection per concurrent run: runs wait "
            "for a free pooled connection.",
            code="store_pool_too_large",
        )
    return budget
