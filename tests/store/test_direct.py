"""``insert_rows`` and ``execute_direct`` do exactly what ``connection.execute`` does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    bindparam,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from corral.settings import StoreSettings
from corral.store import (
    SYSTEM,
    JSONType,
    Store,
    USDAmount,
    UTCDateTime,
    execute_direct,
    insert_rows,
    utcnow,
)

_METADATA = MetaData()
_ITEMS = Table(
    "insert_items",
    _METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("data", JSONType),
    Column("raw", JSON),
    Column("at", UTCDateTime()),
    Column("cost_usd", USDAmount()),
    Column("flag", Boolean, nullable=False),
    Column("kind", String(16), nullable=False, default="plain"),
    Column("stamped_at", UTCDateTime(), default=utcnow),
)


@pytest.fixture
async def store(store_settings: StoreSettings) -> AsyncIterator[Store]:
    schema = store_settings.postgres_schema
    store = Store(
        store_settings.url,
        connect_args={"server_settings": {"search_path": schema}} if schema else None,
    )
    await store.run_sync(lambda c: _METADATA.create_all(c), SYSTEM)
    try:
        yield store
    finally:
        await store.dispose()


def _rows(prefix: str) -> list[dict[str, Any]]:
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    return [
        {
            "name": f"{prefix}-1",
            "data": {"b": [1, 2.5, "é"], "a": None},
            "raw": None,
            "at": at,
            "cost_usd": Decimal("0.000123456789"),
            "flag": True,
            "stamped_at": at,
        },
        {
            "name": f"{prefix}-2",
            "data": None,
            "raw": ["x"],
            "at": None,
            "cost_usd": None,
            "flag": False,
            "stamped_at": at,
        },
    ]


def _stored(connection: Connection, prefix: str) -> list[tuple[Any, ...]]:
    """The rows as the database holds them (no SQLAlchemy result processing), minus the id."""
    cast = "::text" if connection.dialect.name == "postgresql" else ""
    columns = ", ".join(f"{c.name}{cast}" for c in _ITEMS.c if c.name not in ("id", "name"))
    result = connection.exec_driver_sql(
        f"SELECT {columns} FROM insert_items WHERE name LIKE '{prefix}-%' ORDER BY name"
    )
    return [tuple(row) for row in result]


@pytest.mark.parametrize("count", [1, 2])
async def test_stores_the_same_values_as_a_core_insert(store: Store, count: int) -> None:
    def both(connection: Connection) -> tuple[list[Any], list[Any]]:
        connection.execute(_ITEMS.insert(), _rows("core")[:count])
        insert_rows(connection, _ITEMS, _rows("fast")[:count])
        return _stored(connection, "core"), _stored(connection, "fast")

    core, fast = await store.run_sync(both, SYSTEM)
    assert len(fast) == count
    assert fast == core
    read = await store.run_sync(
        lambda c: c.execute(select(_ITEMS).where(_ITEMS.c.name == "fast-1")).one(), SYSTEM
    )
    assert read.kind == "plain"  # the constant default of a column the rows leave out
    assert read.cost_usd == Decimal("0.000123456789")
    assert read.data == {"b": [1, 2.5, "é"], "a": None}


async def test_timestamps_are_stored_as_a_core_insert_stores_them(store: Store) -> None:
    """UTCDateTime's one-function processor on SQLite writes the text SQLAlchemy writes."""
    moments = [
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),  # no microseconds
        datetime(2026, 12, 31, 23, 30, 0, 1, tzinfo=timezone(timedelta(hours=-2))),  # next year
        datetime(1999, 1, 1, 0, 15, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    ]

    def rows(prefix: str) -> list[dict[str, Any]]:
        return [
            {**_rows(prefix)[0], "name": f"{prefix}-{i}", "at": at, "stamped_at": at}
            for i, at in enumerate(moments)
        ]

    def both(connection: Connection) -> tuple[list[Any], list[Any]]:
        connection.execute(_ITEMS.insert(), rows("tcore"))
        insert_rows(connection, _ITEMS, rows("tfast"))
        return _stored(connection, "tcore"), _stored(connection, "tfast")

    core, fast = await store.run_sync(both, SYSTEM)
    assert len(fast) == len(moments)
    assert fast == core

    def naive(connection: Connection) -> None:
        insert_rows(connection, _ITEMS, [{**_rows("naive")[0], "at": datetime(2026, 1, 1)}])  # noqa: DTZ001

    with pytest.raises(ValueError, match="naive datetime"):
        await store.run_sync(naive, SYSTEM)


async def test_a_column_with_a_callable_default_left_out_gets_its_default(store: Store) -> None:
    rows = [{k: v for k, v in row.items() if k != "stamped_at"} for row in _rows("late")]
    before = utcnow()
    await store.run_sync(lambda c: insert_rows(c, _ITEMS, rows), SYSTEM)
    stamped = await store.run_sync(
        lambda c: list(c.execute(select(_ITEMS.c.stamped_at).order_by(_ITEMS.c.name)).scalars()),
        SYSTEM,
    )
    assert len(stamped) == 2
    assert all(value >= before for value in stamped)


async def test_a_constraint_violation_is_raised_as_sqlalchemy_raises_it(store: Store) -> None:
    await store.run_sync(lambda c: insert_rows(c, _ITEMS, _rows("dup")[:1]), SYSTEM)
    with pytest.raises(IntegrityError):
        await store.run_sync(lambda c: insert_rows(c, _ITEMS, _rows("dup")), SYSTEM)
    # The failed transaction wrote nothing: the first row only.
    count = await store.run_sync(
        lambda c: c.execute(text("SELECT count(*) FROM insert_items")).scalar_one(), SYSTEM
    )
    assert count == 1


async def test_statement_listeners_still_see_the_insert(store: Store) -> None:
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    def insert(connection: Connection) -> None:
        event.listen(connection, "before_cursor_execute", listener)
        try:
            insert_rows(connection, _ITEMS, _rows("seen"))
        finally:
            event.remove(connection, "before_cursor_execute", listener)

    def update(connection: Connection) -> list[tuple[Any, ...]]:
        event.listen(connection, "before_cursor_execute", listener)
        try:
            execute_direct(connection, _MOVE, {"b_name": "seen-1", "kind": "moved"})
            return execute_direct(connection, _SELECT, {"b_flag": True})
        finally:
            event.remove(connection, "before_cursor_execute", listener)

    await store.run_sync(insert, SYSTEM)
    selected = await store.run_sync(update, SYSTEM)
    assert selected == [("seen-1", "moved")]
    assert [s for s in seen if s.startswith("INSERT INTO insert_items")]
    assert [s for s in seen if s.startswith("UPDATE insert_items")]


# Built once, as the hot path builds them: an UPDATE whose SET columns come from the
# parameters, with a literal in its WHERE and RETURNING; a SELECT with a literal LIMIT.
_UPDATE = (
    _ITEMS.update()
    .where(_ITEMS.c.name == bindparam("b_name"), _ITEMS.c.kind == "plain")
    .returning(_ITEMS.c.name, _ITEMS.c.flag)
)
_MOVE = _ITEMS.update().where(_ITEMS.c.name == bindparam("b_name"))
_SELECT = (
    select(_ITEMS.c.name, _ITEMS.c.kind)
    .where(_ITEMS.c.flag == bindparam("b_flag"), _ITEMS.c.kind != "gone")
    .order_by(_ITEMS.c.name)
    .limit(1)
)


async def test_execute_direct_updates_and_returns_as_a_core_execute(store: Store) -> None:
    at = datetime(2027, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    changes = {"data": {"k": ["v"]}, "raw": None, "at": at, "cost_usd": Decimal("1.5")}

    def both(connection: Connection) -> tuple[Any, ...]:
        connection.execute(_ITEMS.insert(), _rows("core") + _rows("fast"))
        core = connection.execute(_UPDATE, {"b_name": "core-1", **changes}).all()
        fast = execute_direct(connection, _UPDATE, {"b_name": "fast-1", **changes})
        missed = execute_direct(connection, _UPDATE, {"b_name": "nobody", **changes})
        selected = execute_direct(connection, _SELECT, {"b_flag": False})
        return (
            core,
            fast,
            missed,
            selected,
            _stored(connection, "core"),
            _stored(connection, "fast"),
        )

    core, fast, missed, selected, stored_core, stored_fast = await store.run_sync(both, SYSTEM)
    assert [(name, bool(flag)) for name, flag in fast] == [("fast-1", True)]
    assert [tuple(r) for r in core] == [("core-1", True)]
    assert missed == []
    assert selected == [("core-2", "plain")]
    assert stored_fast == stored_core
    assert stored_fast[0] != stored_fast[1]  # the update changed the first row only


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_utc_datetime_binds_what_sqlalchemys_chain_binds(dialect_name: str) -> None:
    """The type's own bind processor (one function on SQLite) against the default chain."""
    dialect = sqlite.dialect() if dialect_name == "sqlite" else postgresql.dialect()
    column_type = UTCDateTime().dialect_impl(dialect)  # as a compiled statement binds it
    process = column_type.bind_processor(dialect)
    chain = TypeDecorator.bind_processor(column_type, dialect)
    moments = [
        None,
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 30, 0, 1, tzinfo=timezone(timedelta(hours=-2))),
        datetime(1999, 1, 1, 0, 15, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        datetime(1, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=11))),
    ]
    if chain is None:
        assert process is None
        return
    assert process is not None
    assert [process(at) for at in moments] == [chain(at) for at in moments]
    if dialect_name == "sqlite":
        assert process(moments[1]) == "2026-03-04 05:06:07.000000"  # SQLite's DATETIME text
    for bind in (process, chain):
        with pytest.raises(ValueError, match="naive datetime"):
            bind(datetime(2026, 1, 1))  # noqa: DTZ001


_SELECT_ALL = (
    select(_ITEMS, _ITEMS.c.name.label("again"))
    .where(_ITEMS.c.name.like(bindparam("b_like")), _ITEMS.c.kind == "plain")
    .order_by(_ITEMS.c.name)
)
_CLAIM = (
    _ITEMS.update()
    .where(_ITEMS.c.name == bindparam("b_name"))
    .values(kind=bindparam("b_kind", "taken", type_=_ITEMS.c.kind.type), at=bindparam("b_at"))
    .returning(*_ITEMS.c)
)


async def test_execute_direct_processed_rows_are_a_core_execute_s(store: Store) -> None:
    """Processed values and fields by name: what ``connection.execute(...).all()`` gives."""
    at = datetime(2027, 5, 6, 7, 8, 9, 10, tzinfo=UTC)

    def both(connection: Connection) -> tuple[Any, ...]:
        connection.execute(_ITEMS.insert(), _rows("pcore") + _rows("pfast"))
        selected_core = connection.execute(_SELECT_ALL, {"b_like": "p%"}).all()
        selected = execute_direct(connection, _SELECT_ALL, {"b_like": "p%"}, processed=True)
        none = execute_direct(connection, _SELECT_ALL, {"b_like": "nobody%"}, processed=True)
        core = connection.execute(_CLAIM, {"b_name": "pcore-1", "b_at": at}).all()
        fast = execute_direct(connection, _CLAIM, {"b_name": "pfast-1", "b_at": at}, processed=True)
        stored = _stored(connection, "pcore"), _stored(connection, "pfast")
        return selected_core, selected, none, core, fast, stored

    selected_core, selected, none, core, fast, (stored_core, stored_fast) = await store.run_sync(
        both, SYSTEM
    )
    assert none == []
    assert len(selected) == 4
    for mine, theirs in zip(selected, selected_core, strict=True):
        assert tuple(mine) == tuple(theirs)
        assert [type(v) for v in mine] == [type(v) for v in theirs]
        assert all(getattr(mine, key) == value for key, value in theirs._mapping.items())
    # The UPDATE ... RETURNING of another row: the same values but the id and the name.
    assert fast[0]._fields == tuple(core[0]._mapping)
    assert [type(v) for v in fast[0]] == [type(v) for v in core[0]]
    assert tuple(fast[0])[2:] == tuple(core[0])[2:]
    assert selected[0].data == {"b": [1, 2.5, "é"], "a": None}
    assert selected[0].cost_usd == Decimal("0.000123456789")
    assert selected[0].flag is True
    assert selected[0].at == datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    assert selected[0].again == "pcore-1"
    assert (fast[0].name, fast[0].kind, fast[0].at) == ("pfast-1", "taken", at)
    assert stored_fast == stored_core  # both updates stored the same values
