"""Hot-path statements executed on the DB-API cursor, compiled once per statement and dialect.

``connection.execute(statement, parameters)`` costs SQLAlchemy's per-execute setup every time
(cache key, execution context, parameter processing, result object): about as much Python as
the statement itself takes in SQLite. :func:`insert_rows` and :func:`execute_direct` compile
the statement once per (dialect, statement, parameter names) with SQLAlchemy itself, so the SQL
text, the parameter style (``?`` on SQLite, ``$n`` with casts on asyncpg) and the per-column
bind processors (JSON serializer, SQLite's datetime text, ``UTCDateTime``, ``USDAmount``) are
exactly the ones ``connection.execute`` would use; each call then only processes the values
and runs the driver's ``execute`` / ``executemany`` in the caller's transaction. The
per-database differences stay in SQLAlchemy's dialects and here.

Statements that need more than plain values (a column default that is not a constant, a SQL
expression as a value, an expanding ``IN``), and connections with cursor-execute listeners or
``echo`` (so that instrumentation and logging still see every statement), go through
``connection.execute``.
"""

from __future__ import annotations

import keyword
import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Select, Table, Update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["execute_direct", "insert_rows"]

Direct = Select[Any] | Insert | Update | Delete
"""Statements :func:`execute_direct` runs (built once, at import: the cache is per object)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One compiled statement: its SQL and, per parameter in order, where its value comes from."""

    sql: str
    names: tuple[str, ...]
    """Parameter names, in the order of the statement's parameters (repeated if reused)."""
    constants: Mapping[str, Any]
    """Values of parameters the callers do not pass (literals, constant column defaults)."""
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    fetch: bool
    """Whether it returns rows (``SELECT``, ``RETURNING``)."""


_CACHE: weakref.WeakKeyDictionary[Dialect, dict[tuple[Any, tuple[str, ...]], _Prepared | None]]
_CACHE = weakref.WeakKeyDictionary()


def _constant(statement: Direct, compiled: Any, name: str) -> tuple[bool, Any]:
    """The fixed value of parameter ``name`` that callers do not pass, if it has one."""
    if isinstance(statement, Insert):
        table = statement.table
        default = table.c[name].default if name in table.c else None
        if default is None or not default.is_scalar:
            return False, None  # a callable or SQL default: SQLAlchemy's execution context
        return True, default.arg  # type: ignore[attr-defined]
    if isinstance(statement, Update) and name in statement.table.c:
        return False, None  # an onupdate default
    bind = compiled.binds.get(name)
    if bind is None or bind.required or bind.callable is not None:
        return False, None
    return True, bind.value  # a literal of the statement (a status, a LIMIT)


def _prepare(dialect: Dialect, statement: Direct, keys: tuple[str, ...]) -> _Prepared | None:
    """Compile ``statement`` for ``dialect`` and ``keys``; ``None`` if it needs SQLAlchemy."""
    compiled: Any = statement.compile(
        dialect=dialect, column_keys=list(keys), for_executemany=isinstance(statement, Insert)
    )
    if compiled.post_compile_params or compiled.literal_execute_params:
        return None  # rendered per execution (an expanding IN)
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    constants: dict[str, Any] = {}
    processors: list[Callable[[Any], Any] | None] = []
    for name in names:
        if name not in keys:
            fixed, constants[name] = _constant(statement, compiled, name)
            if not fixed:
                return None
        process = compiled._bind_processors.get(name)
        if process is not None and not callable(process):
            return None  # a tuple parameter's processors
        processors.append(process)
    fetch = isinstance(statement, Select) or bool(compiled.effective_returning)
    return _Prepared(
        compiled.string, names, constants, tuple(processors), compiled.positional, fetch
    )


def _prepared(dialect: Dialect, statement: Direct, keys: tuple[str, ...]) -> _Prepared | None:
    by_statement = _CACHE.get(dialect)
    if by_statement is None:
        by_statement = _CACHE.setdefault(dialect, {})
    try:
        return by_statement[statement, keys]
    except KeyError:
        prepared = by_statement[statement, keys] = _prepare(dialect, statement, keys)
        return prepared


_MISSING: Any = object()


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


def _plan(
    connection: Connection, statement: Direct, rows: Sequence[Mapping[str, Any]]
) -> tuple[_Prepared, list[Any]] | None:
    """The compiled statement and processed parameters, or ``None``: use ``connection.execute``."""
    if connection.engine.echo or (
        connection.dispatch.before_cursor_execute
        or connection.engine.dispatch.before_cursor_execute
    ):
        return None
    prepared = _prepared(connection.dialect, statement, tuple(rows[0]))
    parameters = None if prepared is None else _parameters(prepared, rows)
    return None if prepared is None or parameters is None else (prepared, parameters)


def _run(connection: Connection, prepared: _Prepared, parameters: list[Any]) -> list[Any]:
    dialect = connection.dialect
    dbapi_connection = connection.connection
    cursor = dbapi_connection.cursor()
    try:
        if len(parameters) == 1:
            cursor.execute(prepared.sql, parameters[0])
        else:
            cursor.executemany(prepared.sql, parameters)
        return list(cursor.fetchall()) if prepared.fetch else []
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
    statement = _INSERTS.get(table)
    if statement is None:
        statement = _INSERTS[table] = table.insert()
    plan = _plan(connection, statement, rows)
    if plan is None:
        connection.execute(statement, list(rows))
    else:
        _run(connection, *plan)


_INSERTS: weakref.WeakKeyDictionary[Table, Insert] = weakref.WeakKeyDictionary()


def execute_driver_sql(connection: Connection, sql: str) -> None:
    """Run ``sql`` (no parameters, no rows) on the DB-API cursor, as ``exec_driver_sql`` would.

    For the statements of every transaction (``BEGIN IMMEDIATE``): the same driver call and
    the same wrapped errors (a busy database is ``sqlalchemy.exc.OperationalError``; a lost
    connection is invalidated), without SQLAlchemy's execution context and result. With
    ``echo`` or a cursor-execute listener it goes through ``connection.exec_driver_sql``.

    Raises:
        sqlalchemy.exc.DBAPIError: The driver refused the statement.
    """
    if connection.engine.echo or (
        connection.dispatch.before_cursor_execute
        or connection.engine.dispatch.before_cursor_execute
    ):
        connection.exec_driver_sql(sql)
        return
    _run(connection, _Prepared(sql, (), {}, (), True, False), [()])


def execute_direct(
    connection: Connection,
    statement: Direct,
    parameters: Mapping[str, Any],
    *,
    processed: bool = False,
) -> list[Any]:
    """Execute ``statement`` once with ``parameters``; its rows as the driver returns them.

    For small statements built once and run on every step. An ``UPDATE`` without
    ``.values()`` sets the columns named in ``parameters``, as ``connection.execute`` does.

    Args:
        connection: The transaction's connection (SQLite or PostgreSQL).
        statement: The statement; the cache holds it by identity, so build it once.
        parameters: Bind parameters and, for an ``UPDATE`` or ``INSERT``, column values.
        processed: Return the rows as ``connection.execute(...).all()`` does (see
            :func:`_execute_processed`) instead of tuples of driver values.

    Returns:
        The rows (``RETURNING`` or ``SELECT``) as tuples of driver values: no result
        processing, so only for columns whose driver value is what the caller wants (strings,
        integers; a SQLite boolean is ``0``/``1``). With ``processed``, processed rows whose
        fields are named by the columns' keys.

    Raises:
        sqlalchemy.exc.DBAPIError: The driver refused the statement.
    """
    if processed:
        return _execute_processed(connection, statement, parameters)
    plan = _plan(connection, statement, [parameters]) if parameters else None
    if plan is None:
        result = connection.execute(statement, dict(parameters))
        return [tuple(row) for row in result] if result.returns_rows else []
    return [tuple(row) for row in _run(connection, *plan)]


@dataclass(frozen=True, slots=True)
class _Reader:
    """How to turn one statement's driver rows into processed rows with named fields."""

    make: Callable[[Sequence[Any]], tuple[Any, ...]]
    processors: tuple[Callable[[Any], Any] | None, ...]


_READERS: weakref.WeakKeyDictionary[Dialect, dict[Direct, _Reader | None]]
_READERS = weakref.WeakKeyDictionary()


def _reader(dialect: Dialect, statement: Direct) -> _Reader | None:
    """The result processors of ``statement``'s columns on SQLite; ``None``: use SQLAlchemy.

    Only SQLite: its driver reports no column types, so SQLAlchemy picks each processor from
    the column's type alone (``coltype`` ``None``), as done here. Other drivers' processors may
    depend on the type the cursor reports (asyncpg's ``NUMERIC``), so they keep ``execute``.
    """
    by_statement = _READERS.get(dialect)
    if by_statement is None:
        by_statement = _READERS.setdefault(dialect, {})
    try:
        return by_statement[statement]
    except KeyError:
        pass
    reader = None
    if dialect.name == "sqlite":
        compiled: Any = statement.compile(dialect=dialect)
        columns = list(compiled._result_columns)
        keys = [column.keyname for column in columns]
        if (
            columns
            and all(isinstance(key, str) and key.isidentifier() for key in keys)
            and not any(key.startswith("_") or keyword.iskeyword(key) for key in keys)
            and len(set(keys)) == len(keys)
        ):
            processors = tuple(
                column.type._cached_result_processor(dialect, None) for column in columns
            )
            row_type: Any = namedtuple("Row", keys)  # type: ignore[misc]
            reader = _Reader(row_type._make, processors)
    by_statement[statement] = reader
    return reader


def _execute_processed(
    connection: Connection, statement: Direct, parameters: Mapping[str, Any]
) -> list[Any]:
    """Execute ``statement`` once with ``parameters``; its rows processed, fields by name.

    :func:`execute_direct` with SQLAlchemy's result processing: each value is what
    ``connection.execute(statement, parameters).all()`` gives (an aware ``datetime``, a
    decoded JSON document, a ``bool``, a ``Decimal``), and each row has the columns' keys as
    attributes (``row.id``), indexes and iterates as that ``Row`` does. On SQLite, rows are
    named tuples built by the driver-level path; elsewhere (or when the statement needs
    SQLAlchemy) they are SQLAlchemy's ``Row`` objects.

    Args:
        connection: The transaction's connection (SQLite or PostgreSQL).
        statement: The statement; cached by identity, so build it once.
        parameters: Bind parameters and, for an ``UPDATE`` or ``INSERT``, column values.

    Returns:
        The rows (``RETURNING`` or ``SELECT``).

    Raises:
        sqlalchemy.exc.DBAPIError: The driver refused the statement.
    """
    reader = _reader(connection.dialect, statement) if parameters else None
    plan = None if reader is None else _plan(connection, statement, [parameters])
    if plan is None or reader is None:
        return list(connection.execute(statement, dict(parameters)).all())
    make, processors = reader.make, reader.processors
    return [
        make(
            [
                value if process is None else process(value)
                for value, process in zip(row, processors, strict=True)
            ]
        )
        for row in _run(connection, *plan)
    ]
