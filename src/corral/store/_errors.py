"""Which store errors are transient: worth retrying later rather than failing the work for good.

The rule lives here, with the other per-database differences of the store, so that the worker
and anything else that retries agree on it.
"""

from __future__ import annotations

import errno
import socket
import sqlite3

from sqlalchemy import exc as sa_exc

__all__ = ["is_transient_error"]

_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
"""PostgreSQL SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html):
``08`` connection exception, ``53`` insufficient resources (``53300`` too_many_connections)."""

_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown (also a backend ended by pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (the server is starting or shutting down)
    }
)

_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})

_TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database table is locked", "disk i/o error")


def is_transient_error(error: BaseException) -> bool:
    """Whether ``error`` came from a store condition that may pass when retried later.

    Transient: the server refused or dropped the connection (``too many clients``, connection
    refused or reset, a terminated backend, a server restarting), the pool had no connection
    free in time, a serialization failure or detected deadlock, a lock not available, and
    SQLite's ``database is locked``. Everything else (a constraint violation, a missing table,
    a bug) is deterministic: retrying would fail the same way.

    Args:
        error: An exception raised by a store call, wrapped by SQLAlchemy or raw from the driver
            (asyncpg raises connect errors unwrapped); its causes are examined too.

    Returns:
        ``True`` when retrying the same work later may succeed.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _transient_itself(current):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return False


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, sa_exc.TimeoutError):  # QueuePool: no connection free in time
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
        return True  # refused, reset, timed out (asyncpg's connect timeout), name lookup
    if isinstance(error, OSError) and error.errno in _UNREACHABLE:
        return True
    if isinstance(error, sqlite3.OperationalError):
        message = str(error).lower()
        return any(text in message for text in _TRANSIENT_SQLITE_MESSAGES)
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False
