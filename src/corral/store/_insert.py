"""Hot-path INSERTs executed on the DB-API cursor, compiled once per table, columns and dialect.

``connection.execute(table.insert(), rows)`` costs SQLAlchemy's per-execute setup every time
(cache key, execution context, parameter processing, result object): about as much Python as
the statement itself takes in SQLite. :func:`insert_rows` compiles the INSERT once per
(dialect, table, column names) with SQLAlchemy itself, so the SQL text, the parameter style
(``?`` on SQLite, ``$n`` with casts on asyncpg) and the per-column bind processors (JSON
serializer, SQLite's datetime text, ``UTCDateTime``, ``USDAmount``) are exactly the ones
``connection.execute`` would use; each call then only processes the values and runs the
driver's ``execute`` / ``executemany`` in the caller's transaction. The per-database
differences stay in SQLAlchemy's dialects and here.

Rows whose INSERT needs more than plain values (a column default that is not a constant, a SQL
expression as a value), and connections with cursor-execute listeners or ``echo`` (so that
instrumentation and logging still see every statement), go through ``connection.execute``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["insert_rows"]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One compiled INSERT: its SQL and, per parameter in order, where its value comes from."""

    sql: str
    names: tuple[str, ...]
    """Row keys, in the order of the statement's parameters."""
    constants: Mapping[str, Any]
    """Values of parameters the rows do not carry (columns with a constant default)."""
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_CACHE: weakref.WeakKeyDictionary[Dialect, dict[tuple[Table, tuple[str, ...]], _Prepared | None]]
_CACHE = weakref.WeakKeyDictionary()


def _prepare(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Prepared | None:
    """Compile ``table``'s INSERT of ``keys`` for ``dialect``; ``None`` if it needs SQLAlchemy."""
    compiled = table.insert().compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    names: tuple[str, ...] = tuple(compiled.positiontup or ()) if compiled.positional else ()
    if not compiled.positional:
        names = tuple(compiled.binds)
    constants: dict[str, Any] = {}
    for name in names:
        if name in keys:
            continue
        default = table.c[name].default if name in table.c else None
        if default is None or not default.is_scalar:
            return None  # a callable or SQL default: SQLAlchemy's execution context runs it
        constants[name] = default.arg  # type: ignore[attr-defined]
    processors: list[Callable[[Any], Any] | None] = []
    for name in names:
        process = compiled._bind_processors.get(name)
        if process is not None and not callable(process):
            return None  # a tuple parameter's processors
        processors.append(process)
    return _Prepared(compiled.string, names, constants, tuple(processors), compiled.positional)


def _prepared(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Prepared | None:
    by_statement = _CACHE.get(dialect)
    if by_statement is None:
        by_statement = _CACHE.setdefault(dialect, {})
    try:
        return by_statement[table, keys]
    except KeyError:
        prepared = by_statement[table, keys] = _prepare(dialect, table, keys)
        return prepared


def _parameters(prepared: _Prepared, rows: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """Each row's processed values, in statement order; ``None`` if a row needs SQLAlchemy."""
    names, constants, processors = prepared.names, prepared.constants, prepared.processors
    out: list[Any] = []
    for row in rows:
        values = []
        for name, process in zip(names, processors, strict=True):
            value = row[name] if name in row else constants.get(name, _MISSING)
            if value is _MISSING or isinstance(value, ClauseElement):
                return None
            values.append(value if process is None else process(value))  # None too: JSON 'null'
        out.append(tuple(values) if prepared.positional else dict(zip(names, values, strict=True)))
    return out


_MISSING: Any = object()


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in the connection's transaction (nothing if empty).

    The same rows, values and errors as ``connection.execute(table.insert(), rows)``: the
    statement is the one SQLAlchemy compiles for the first row's keys, and a driver error is
    raised wrapped as SQLAlchemy wraps it (``sqlalchemy.exc.IntegrityError``...). Generated
    primary keys are not returned.

    Args:
        connection: The transaction's connection (SQLite or PostgreSQL).
        table: The table.
        rows: Rows by column key, all with the first row's keys; plain values.

    Raises:
        sqlalchemy.exc.DBAPIError: The driver refused the statement (a constraint, a lock...).
    """
    if not rows:
        return
    dialect = connection.dialect
    prepared = _prepared(dialect, table, tuple(rows[0]))
    parameters = None if prepared is None else _parameters(prepared, rows)
    if (
        prepared is None
        or parameters is None
        or connection.engine.echo
        or connection.dispatch.before_cursor_execute
        or connection.engine.dispatch.before_cursor_execute
    ):
        connection.execute(table.insert(), list(rows))
        return
    dbapi_connection = connection.connection
    cursor = dbapi_connection.cursor()
    try:
        if len(parameters) == 1:
            cursor.execute(prepared.sql, parameters[0])
        else:
            cursor.executemany(prepared.sql, parameters)
    except dialect.loaded_dbapi.Error as error:
        invalidated = dialect.is_disconnect(error, dbapi_connection.dbapi_connection, cursor)
        if invalidated:
            connection.invalidate(error)
        raise sa_exc.DBAPIError.instance(
            prepared.sql,
            parameters,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated,
            dialect=dialect,
            ismulti=len(parameters) > 1,
        ) from error
    finally:
        cursor.close()
