"""Engines and sessions. Every per-database difference of the store lives in this module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["Store", "create_engine", "skip_locked"]


def create_engine(
    url: str,
    *,
    echo: bool = False,
    sqlite_busy_timeout_ms: int = 30_000,
    connect_args: dict[str, Any] | None = None,
) -> AsyncEngine:
    """Create an async engine for ``url`` with Corral's per-database settings.

    SQLite: WAL journal, ``synchronous=NORMAL`` (durable across application crashes; the last
    transactions may be lost on power failure, https://sqlite.org/pragma.html#pragma_synchronous),
    foreign keys on, and every transaction ``BEGIN IMMEDIATE`` so that concurrent writers wait on
    ``busy_timeout`` instead of failing with ``SQLITE_BUSY`` when a read upgrades to a write.

    Args:
        url: SQLAlchemy async URL (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``).
        echo: Log SQL statements.
        sqlite_busy_timeout_ms: Milliseconds a SQLite writer waits for the lock.
        connect_args: Passed to the driver's ``connect`` (e.g. asyncpg ``server_settings``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, echo=echo, pool_pre_ping=True, connect_args=connect_args or {}
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, echo=echo, connect_args=connect_args or {})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so "begin" below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """The database: one engine and a session factory.

    Args:
        url: SQLAlchemy async URL.
        echo: Log SQL statements.
        sqlite_busy_timeout_ms: Milliseconds a SQLite writer waits for the lock.
        connect_args: Passed to the driver's ``connect``.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        sqlite_busy_timeout_ms: int = 30_000,
        connect_args: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.engine = create_engine(
            url,
            echo=echo,
            sqlite_busy_timeout_ms=sqlite_busy_timeout_ms,
            connect_args=connect_args,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on exit, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def skip_locked(query: Any, dialect: str) -> Any:
    """Make a claim query skip rows other transactions hold (PostgreSQL ``FOR UPDATE SKIP LOCKED``).

    SQLite needs nothing: ``BEGIN IMMEDIATE`` already serialises writers.
    """
    return query.with_for_update(skip_locked=True) if dialect == "postgresql" else query
