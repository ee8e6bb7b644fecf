"""Engines and sessions. Every per-database difference of the store lives in this module."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import sqlalchemy
from sqlalchemy import Connection, Engine, Table, event, or_
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.util import await_, greenlet_spawn

from corral.errors import MissingTenantScope
from corral.store._base import TenantMixin
from corral.store._direct import execute_direct, execute_driver_sql

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

    from corral.settings import Settings

__all__ = [
    "SYSTEM",
    "MissingTenantScope",
    "Scope",
    "Store",
    "SystemScope",
    "create_engine",
    "insert_on_conflict",
    "skip_locked",
]

T = TypeVar("T")


class SystemScope:
    """The scope of deliberate cross-tenant platform work.

    Workers' claims and lease renewals, the approval expiry sweep, tenant administration. Use
    :data:`SYSTEM`; never for a request made on behalf of a tenant's principal.
    """

    def __repr__(self) -> str:
        return "SYSTEM"


SYSTEM: Final = SystemScope()
"""The one :class:`SystemScope`."""

Scope = str | SystemScope
"""A tenant id, or :data:`SYSTEM`."""

_SCOPE_KEY = "corral_scope"
_POSTGRES_SCOPE_SETTING = "corral.tenant_id"
"""The session setting PostgreSQL's row-level security policies compare ``tenant_id`` with
(migration 0004); ``*`` is the system scope."""

_SET_SCOPE = sqlalchemy.text(f"SELECT set_config('{_POSTGRES_SCOPE_SETTING}', :scope, true)")
_SET_SCOPE_DIRECT = sqlalchemy.select(
    sqlalchemy.func.set_config(
        sqlalchemy.literal(_POSTGRES_SCOPE_SETTING),
        sqlalchemy.bindparam("scope", type_=sqlalchemy.String),
        sqlalchemy.true(),
    )
)
"""The same statement for :func:`execute_direct` (compiled once: no per-execute SQLAlchemy)."""


def _scope_setting(scope: Scope) -> str:
    if isinstance(scope, SystemScope):
        return "*"
    if not scope or scope == "*":
        raise MissingTenantScope(f"invalid tenant scope {scope!r}")
    return scope


@event.listens_for(Session, "do_orm_execute")
def _apply_tenant_scope(state: ORMExecuteState) -> None:
    """Every ORM statement of a tenant-scoped session sees only that tenant's rows.

    SQLAlchemy's documented "global criteria" recipe (``with_loader_criteria``): the filter is
    added to every entity carrying ``tenant_id`` (``TenantMixin``), joins and relationships
    included. A session opened without a scope refuses to run statements at all.
    """
    scope = state.session.info.get(_SCOPE_KEY)
    if scope is None:
        raise MissingTenantScope(
            "query in a session without a tenant scope; open it with "
            "store.transaction(tenant_id) / store.read(tenant_id), or SYSTEM for platform work"
        )
    if isinstance(scope, SystemScope) or state.is_column_load or state.is_relationship_load:
        return
    if state.is_select:
        # Platform-wide rows (tenant_id '*': platform kill switches, the platform audit chain)
        # are readable from every tenant, as PostgreSQL's row-level security allows.
        state.statement = state.statement.options(
            with_loader_criteria(
                TenantMixin,
                lambda cls: or_(cls.tenant_id == scope, cls.tenant_id == "*"),
                include_aliases=True,
            )
        )
    elif state.is_update or state.is_delete:
        state.statement = state.statement.options(
            with_loader_criteria(
                TenantMixin, lambda cls: cls.tenant_id == scope, include_aliases=True
            )
        )


@event.listens_for(Session, "before_flush")
def _check_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    """A tenant-scoped session writes only rows of its own tenant."""
    scope = session.info.get(_SCOPE_KEY)
    if scope is None:
        raise MissingTenantScope("flush in a session without a tenant scope")
    if isinstance(scope, SystemScope):
        return
    for obj in (*session.new, *session.dirty):
        tenant = getattr(obj, "tenant_id", scope)
        if isinstance(obj, TenantMixin) and tenant != scope:
            raise MissingTenantScope(
                f"{type(obj).__name__} of tenant {tenant!r} written in a session of {scope!r}"
            )


def _json_dumps(value: Any) -> str:
    """JSON columns' serializer: orjson (a few times faster), the stdlib where orjson refuses.

    orjson refuses what the stdlib accepts in a few cases (integers beyond 64 bits, non-string
    keys): those values are stored exactly as before. Either text reads back as the same value.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def _json_loads(text: str | bytes) -> Any:
    """JSON columns' deserializer (orjson; the stdlib for what orjson refuses, e.g. ``NaN``)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


_JSON_CODEC: Final = {"json_serializer": _json_dumps, "json_deserializer": _json_loads}


class RollbackOnClose(sqlite3.Connection):
    """A SQLite connection that rolls back its open transaction before it closes.

    Python's ``sqlite3`` (before 3.12) closes with ``sqlite3_close_v2`` only: while a cursor
    elsewhere still holds one of its statements, SQLite keeps the connection open as a
    "zombie" (https://sqlite.org/c3ref/close.html), with its transaction and so the
    database's write lock. SQLAlchemy closes a connection that way when a task is cancelled
    in the middle of a statement; every other writer then waits ``busy_timeout`` and fails
    with ``database is locked``. Rolling back first releases the lock whatever holds the
    statements (since SQLite 3.7.11 a ``ROLLBACK`` aborts pending statements).
    """

    def close(self) -> None:
        try:
            if self.in_transaction:
                self.rollback()
        except sqlite3.Error:  # already broken: closing still frees what it can
            pass
        super().close()


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    """WAL, ``synchronous=NORMAL``, foreign keys, busy timeout, ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so "begin" below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads take a snapshot without the write lock (WAL readers never block the writer).
        readonly = connection.get_execution_options().get("corral_readonly", False)
        execute_driver_sql(connection, "BEGIN" if readonly else "BEGIN IMMEDIATE")


_PLAIN_SCOPE = re.compile(r"[A-Za-z0-9_.:@*-]{1,200}")
"""Scopes written into the ``BEGIN`` round trip as a literal (anything else: a bound parameter)."""


class _ScopeAtBegin:
    """The tenant scope :meth:`Store.run_sync` wants set with the ``BEGIN`` of its checkout.

    Attributes:
        setting: The value of ``corral.tenant_id`` (see :func:`_scope_setting`).
        done: Set by :func:`_ping_by_beginning` once the ``BEGIN`` also set the scope.
    """

    __slots__ = ("done", "setting")

    def __init__(self, setting: str) -> None:
        self.setting, self.done = setting, False


_SCOPE_AT_BEGIN: ContextVar[_ScopeAtBegin | None] = ContextVar(
    "corral_scope_at_begin", default=None
)
"""Set by :meth:`Store._run_in_greenlet` around its checkout (in its own greenlet)."""


class _ScopedTransaction:
    """A transaction begun by :func:`_ping_by_beginning` with its scope, as the adapter sees it.

    SQLAlchemy's asyncpg adapter only ends its transaction object (``commit()`` /
    ``rollback()``, each awaited once); these send what asyncpg's own ``Transaction`` sends.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def commit(self) -> None:
        await self._connection.execute("COMMIT;")

    async def rollback(self) -> None:
        await self._connection.execute("ROLLBACK;")


def _ping_by_beginning(dbapi_connection: Any) -> bool:
    """PostgreSQL pool pre-ping in one round trip: ``BEGIN`` the transaction the caller will use.

    SQLAlchemy's asyncpg adapter pings a pooled connection with three round trips
    (``BEGIN``, ``SELECT ;``, ``ROLLBACK``, so that it works behind PgBouncer's transaction
    mode), then sends ``BEGIN`` again with the checked-out connection's first statement. Every
    Corral checkout runs a transaction, so the ping begins it instead and the first statement
    goes straight after. When :meth:`Store.run_sync` / :meth:`Store.read_sync` asked for it
    (:data:`_SCOPE_AT_BEGIN`), the same round trip also sets the tenant scope
    (``BEGIN; SELECT set_config('corral.tenant_id', ..., true)``, one simple query), so a
    checkpoint's transaction starts with one round trip where there were five.

    A dead connection fails the ``BEGIN`` as it failed the ping, with the same translated
    error, so the pool replaces it exactly as before (``pool_pre_ping``). A connection whose
    transaction is already begun, or in autocommit, or with a non-default isolation level, is
    pinged or begun as the adapter does. A connection checked out and returned with no
    statement is rolled back at check-in (the pool's reset), as any open transaction is.

    Args:
        dbapi_connection: SQLAlchemy's ``AsyncAdapt_asyncpg_connection``.

    Returns:
        ``True`` (a failure raises the driver's error, which the pool classifies).
    """
    adapter = dbapi_connection
    if adapter._transaction is not None or adapter.autocommit:
        adapter.ping()
        return True
    pending = _SCOPE_AT_BEGIN.get()
    default = adapter.isolation_level is None and not adapter.readonly and not adapter.deferrable
    if pending is None or not default or not _PLAIN_SCOPE.fullmatch(pending.setting):
        await_(adapter._start_transaction())
        return True
    query = f"BEGIN; SELECT set_config('{_POSTGRES_SCOPE_SETTING}', '{pending.setting}', true);"
    try:
        await_(adapter._connection.execute(query))
    except Exception as error:  # translated as the adapter translates its own errors
        adapter._handle_exception(error)
    adapter._transaction = _ScopedTransaction(adapter._connection)
    pending.done = True
    return True


def create_engine(
    url: str,
    *,
    echo: bool = False,
    sqlite_busy_timeout_ms: int = 30_000,
    connect_args: dict[str, Any] | None = None,
    pool_size: int = 10,
    max_overflow: int = 5,
    postgres_settings: Mapping[str, str] | None = None,
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
        pool_size: PostgreSQL pooled connections.
        max_overflow: PostgreSQL connections allowed above ``pool_size``.
        postgres_settings: Server settings for each PostgreSQL session (merged into asyncpg's
            ``server_settings``; see :func:`postgres_session_settings`); ignored on SQLite.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if postgres_settings:
            connect_args = dict(connect_args or {})
            connect_args["server_settings"] = {
                **postgres_settings,
                **connect_args.get("server_settings", {}),
            }
        engine = create_async_engine(
            url,
            echo=echo,
            **_JSON_CODEC,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args=connect_args or {},
        )
        if engine.dialect.driver == "asyncpg":
            # The pool pings through the engine's dialect instance (``pool._dialect``).
            engine.dialect.do_ping = _ping_by_beginning  # type: ignore[method-assign]
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        echo=echo,
        connect_args={"factory": RollbackOnClose, **(connect_args or {})},
        pool_reset_on_return=None,
        **_JSON_CODEC,
    )
    _configure_sqlite(engine.sync_engine, sqlite_busy_timeout_ms)
    return engine


class Store:
    """The database: an async engine and sessions, plus a synchronous path for hot writes.

    :meth:`run_sync` runs a synchronous function over a ``Connection`` inside one transaction.
    The runtime's checkpoints use it: on SQLite it runs on one dedicated writer thread with the
    stdlib driver (one thread hop per transaction instead of several per statement through
    ``aiosqlite``); on PostgreSQL it runs through the async engine's ``run_sync``.

    Group commit (SQLite): the writer thread takes every function waiting in its queue (up to
    :attr:`group_commit_max`) and runs them in one transaction, each inside its own savepoint,
    then commits once. A function that raises rolls back to its savepoint and gets its
    exception; the others commit. No caller is answered before the commit, so each function
    is as durable as in a transaction of its own; a failed commit fails every function of the
    group (none of their writes persisted).

    Args:
        url: SQLAlchemy async URL.
        echo: Log SQL statements.
        sqlite_busy_timeout_ms: Milliseconds a SQLite writer waits for the lock.
        connect_args: Passed to the driver's ``connect``.
        pool_size: PostgreSQL pooled connections.
        max_overflow: PostgreSQL connections allowed above ``pool_size``.
        postgres_settings: Server settings for each PostgreSQL session (see
            :func:`postgres_session_settings`); ignored on SQLite.
    """

    group_commit_max: int = 64
    """Most functions the SQLite writer thread commits in one transaction."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        sqlite_busy_timeout_ms: int = 30_000,
        connect_args: dict[str, Any] | None = None,
        pool_size: int = 10,
        max_overflow: int = 5,
        postgres_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.engine = create_engine(
            url,
            echo=echo,
            sqlite_busy_timeout_ms=sqlite_busy_timeout_ms,
            connect_args=connect_args,
            pool_size=pool_size,
            max_overflow=max_overflow,
            postgres_settings=postgres_settings,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(corral_readonly=True), expire_on_commit=False
        )
        self._sync_engine: Engine | None = None
        self._writer: _Writer | None = None
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._sync_engine = sqlalchemy.create_engine(
                parsed.set(drivername="sqlite+pysqlite"),
                echo=echo,
                pool_reset_on_return=None,
                **_JSON_CODEC,
            )
            _configure_sqlite(self._sync_engine, sqlite_busy_timeout_ms)
            self._writer = _Writer(self._sync_engine, self.group_commit_max, sqlite_busy_timeout_ms)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store ``settings`` configure, as every Corral process opens it.

        URL, pool, SQLite busy timeout and the PostgreSQL session settings (schema,
        dead-client detection).

        Args:
            settings: Corral's settings; ``settings.store_url`` and ``settings.store`` are read.

        Returns:
            A new :class:`Store` (call :meth:`dispose` when done).
        """
        store = settings.store
        return cls(
            settings.store_url,
            echo=store.echo,
            sqlite_busy_timeout_ms=store.sqlite_busy_timeout_ms,
            pool_size=store.pool_size,
            max_overflow=store.max_overflow,
            postgres_settings=postgres_session_settings(
                schema=store.postgres_schema,
                dead_client_seconds=store.postgres_dead_client_seconds,
            ),
        )

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self, scope: Scope) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on exit, rolled back on error.

        Args:
            scope: The tenant whose rows the session may read and write, or :data:`SYSTEM`.
                ORM statements get ``tenant_id == scope`` added to every tenant-owned entity;
                on PostgreSQL row-level security enforces the same below the application.

        Raises:
            MissingTenantScope: ``scope`` is empty.
        """
        async with self._session(self.sessions, scope) as session:
            yield session

    @asynccontextmanager
    async def read(self, scope: Scope) -> AsyncIterator[AsyncSession]:
        """A session for reading only: one consistent snapshot, no write lock on SQLite.

        Writing through it is a programming error (SQLite would fail to upgrade the lock).
        ``scope`` as for :meth:`transaction`.
        """
        async with self._session(self._read_sessions, scope) as session:
            yield session

    @asynccontextmanager
    async def _session(
        self, maker: async_sessionmaker[AsyncSession], scope: Scope
    ) -> AsyncIterator[AsyncSession]:
        """One session in one transaction, whose begin and end a cancellation cannot split.

        A task cancelled while the driver runs ``BEGIN``, ``COMMIT``, ``ROLLBACK`` or the
        pool's check-in would leave SQLAlchemy to drop the connection half-way; on SQLite the
        driver's connection then keeps its write lock (every other writer times out on
        ``database is locked``). So those steps finish first and the cancellation is raised
        after them.
        """
        session = maker(info={_SCOPE_KEY: scope})
        try:
            await _to_completion(self._begin(session, scope))
        except BaseException:
            await _to_completion(session.close())
            raise
        try:
            yield session
        except BaseException:
            await _to_completion(_end(session, commit=False))
            raise
        await _to_completion(_end(session, commit=True))

    async def _begin(self, session: AsyncSession, scope: Scope) -> None:
        await session.begin()
        await self._set_scope(await session.connection(), scope)

    async def _set_scope(self, connection: AsyncConnection, scope: Scope) -> None:
        setting = _scope_setting(scope)
        if connection.dialect.name == "postgresql":
            await connection.execute(_SET_SCOPE, {"scope": setting})

    async def run_sync(
        self, fn: Callable[[Connection], T], scope: Scope, *, inline_when_idle: bool = False
    ) -> T:
        """Run ``fn(connection)`` inside one transaction (committed if it returns).

        ``fn`` must not touch the event loop: on SQLite it runs on the writer thread. ``fn``
        uses Core statements, which must filter by ``tenant_id`` themselves; ``scope`` (a tenant
        id or :data:`SYSTEM`) is enforced on PostgreSQL by row-level security.

        ``inline_when_idle`` (SQLite, for small writes on a latency path): when the writer
        thread has nothing to do and the database's write lock is free, ``fn`` runs and
        commits in the calling thread at once (blocking the loop for its statements) instead
        of a round trip through the writer thread; otherwise it goes to the writer thread.
        """
        setting = _scope_setting(scope)  # refuses an empty scope on SQLite as well
        if self._writer is not None:
            return await self._writer.submit(fn, inline_when_idle=inline_when_idle)
        return await greenlet_spawn(self._run_in_greenlet, fn, setting, False)

    async def read_sync(self, fn: Callable[[Connection], T], scope: Scope) -> T:
        """Run ``fn(connection)`` in one read-only snapshot (small indexed reads on hot paths).

        On SQLite it runs in the calling thread with the stdlib driver (a WAL read never waits
        for a lock; no thread hop, at the price of blocking the loop for its statements); on
        PostgreSQL through the async engine's ``run_sync``. ``fn`` must not write; ``scope`` as
        for :meth:`run_sync`.
        """
        setting = _scope_setting(scope)
        if self._sync_engine is not None:
            with self._sync_engine.connect() as connection:
                connection = connection.execution_options(corral_readonly=True)
                with connection.begin():
                    return fn(connection)
        return await greenlet_spawn(self._run_in_greenlet, fn, setting, True)

    def _run_in_greenlet(self, fn: Callable[[Connection], T], setting: str, readonly: bool) -> T:
        """Check out, begin, scope, ``fn``, commit, check in: all in one greenlet.

        The async engine's own ``begin()`` / ``execute`` / ``run_sync`` / commit / close each
        spawn a greenlet and go through the async wrappers; here the synchronous engine under
        it runs the same pool checkout (pre-ping), transaction, statements and commit in the
        greenlet :meth:`run_sync` or :meth:`read_sync` spawned (PostgreSQL only).
        """
        pending = _ScopeAtBegin(setting)
        token = _SCOPE_AT_BEGIN.set(pending)
        try:
            connection = self.engine.sync_engine.connect()  # the pre-ping may set the scope
        finally:
            _SCOPE_AT_BEGIN.reset(token)
        with connection:
            if readonly:
                connection = connection.execution_options(corral_readonly=True)
            with connection.begin():
                if not pending.done:
                    execute_direct(connection, _SET_SCOPE_DIRECT, {"scope": setting})
                return fn(connection)

    async def dispose(self) -> None:
        """Close every pooled connection and the writer thread."""
        await self.engine.dispose()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
        if self._sync_engine is not None:
            self._sync_engine.dispose()


@dataclass(slots=True)
class _Job:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    ok: bool = False
    result: Any = None


_STOP: Final = object()


class _Writer:
    """SQLite's one writer thread, committing the functions waiting in its queue together."""

    def __init__(self, engine: Engine, group_max: int, busy_timeout_ms: int = 30_000) -> None:
        self._engine = engine
        self._group_max = group_max
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._committing = threading.Lock()
        """Held while a group (or an inline job) is in its transaction."""
        self._connection: Connection | None = None
        """The writer thread's connection, kept between groups (no pool checkout and return
        per transaction); dropped after a failed transaction, closed when the thread stops."""

    def submit(
        self, fn: Callable[[Connection], T], *, inline_when_idle: bool = False
    ) -> asyncio.Future[T]:
        if inline_when_idle and self._queue.empty() and self._committing.acquire(blocking=False):
            try:
                loop = asyncio.get_running_loop()
                job = _Job(fn, loop.create_future(), loop)
                if self._inline(job):
                    _answer([job])
                    return job.future
            finally:
                self._committing.release()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="corral-sqlite-writer", daemon=True
                    )
                    self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return future

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _serve(self) -> None:
        try:
            self._serve_jobs()
        finally:
            self._drop_connection()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken: nothing to give back
                connection.invalidate()

    def _serve_jobs(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group: list[_Job] = [item]
            stop = False
            while len(group) < self._group_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                group.append(item)
            with self._committing:
                self._commit(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
            for job in group:
                by_loop.setdefault(job.loop, []).append(job)
            for loop, jobs in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_answer, jobs)
                except RuntimeError:  # the loop closed while its jobs ran: nobody waits
                    pass
            if stop:
                return

    def _inline(self, job: _Job) -> bool:
        """Run ``job`` in this thread if the write lock is free at once; ``False``: it was not.

        The connection waits for no lock (``busy_timeout`` 0 for this transaction): another
        connection's write (the async engine, another process) sends the job to the thread.
        """
        with self._engine.connect() as connection:
            driver = connection.connection.driver_connection  # no SQLAlchemy autobegin
            assert driver is not None
            driver.execute("PRAGMA busy_timeout=0")
            try:
                try:
                    transaction = connection.begin()
                except OperationalError:  # SQLITE_BUSY: someone else writes
                    return False
                try:
                    with transaction:
                        job.result, job.ok = job.fn(connection), True
                except Exception as exc:
                    job.ok, job.result = False, exc
            finally:
                driver.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return True

    def _commit(self, group: list[_Job]) -> None:
        """Run ``group`` in one transaction; each job ends with ``ok`` and its result or error."""
        connection = None
        try:
            connection = self._connection
            if connection is None:
                connection = self._connection = self._engine.connect()
            with connection.begin():
                if len(group) == 1:
                    job = group[0]
                    job.result, job.ok = job.fn(connection), True
                    return
                # On the DB-API cursor (as BEGIN IMMEDIATE): two statements per job of a group.
                for job in group:
                    execute_driver_sql(connection, "SAVEPOINT corral_job")
                    try:
                        job.result, job.ok = job.fn(connection), True
                    except Exception as exc:
                        job.result = exc
                        execute_driver_sql(connection, "ROLLBACK TO SAVEPOINT corral_job")
                    execute_driver_sql(connection, "RELEASE SAVEPOINT corral_job")
        except Exception as exc:  # BEGIN, a savepoint or the COMMIT failed: nothing persisted
            if connection is None or connection.invalidated or connection.in_transaction():
                self._drop_connection()  # broken (or not rolled back): the next one is fresh
            for job in group:
                if job.ok or job.result is None:
                    job.ok, job.result = False, exc


async def _end(session: AsyncSession, *, commit: bool) -> None:
    """Commit (or roll back) ``session``'s transaction, then close it whatever happened."""
    try:
        await (session.commit() if commit else session.rollback())
    finally:
        await session.close()


async def _to_completion(step: Coroutine[Any, Any, None]) -> None:
    """Await ``step`` to its end even if the awaiting task is cancelled meanwhile.

    Raises:
        asyncio.CancelledError: the awaiting task was cancelled (raised once ``step`` ended).
        Exception: what ``step`` raised (if the task was not cancelled).
    """
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        error = None if task.cancelled() else task.exception()
        raise asyncio.CancelledError from error
    task.result()


def _answer(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.cancelled():
            continue
        if job.ok:
            job.future.set_result(job.result)
        else:
            job.future.set_exception(job.result)


def postgres_session_settings(
    *, schema: str | None = None, dead_client_seconds: float = 0.0
) -> dict[str, str]:
    """Server settings for each PostgreSQL session Corral opens (asyncpg ``server_settings``).

    ``dead_client_seconds`` bounds how long the server keeps the session of a Corral process
    it can no longer reach (its host partitioned or gone), and so the row locks that session
    holds: a run a partitioned worker was checkpointing stays locked, and ``FOR UPDATE SKIP
    LOCKED`` claims skip it, until the session ends. Two TCP settings cover the two ways a
    link goes silent:

    * data the server sent is not acknowledged (the session was mid-statement, e.g. between
      the messages of a pipelined ``executemany``): ``tcp_user_timeout`` (milliseconds,
      PostgreSQL 12+, Linux ``TCP_USER_TIMEOUT``, RFC 5482). Without it the kernel
      retransmits for about 15 minutes (``tcp_retries2``), and keepalives do not apply while
      data is unacknowledged;
    * the link is idle: keepalives, first probe after half the time, then 3 probes
      (``tcp_keepalives_idle`` / ``_interval`` / ``_count``, whole seconds).

    Args:
        schema: The ``search_path`` (the schema holding Corral's tables); ``None``: the default.
        dead_client_seconds: About how long a silent client's session may live, in seconds;
            0: leave the server's own settings.

    Returns:
        PostgreSQL setting name -> value, as strings (empty when nothing is set).
    """
    settings: dict[str, str] = {}
    if schema:
        settings["search_path"] = schema
    if dead_client_seconds > 0:
        idle = max(1, int(dead_client_seconds / 2))
        interval = max(1, int((dead_client_seconds - idle) / 3))
        settings.update(
            tcp_user_timeout=str(int(dead_client_seconds * 1000)),
            tcp_keepalives_idle=str(idle),
            tcp_keepalives_interval=str(interval),
            tcp_keepalives_count="3",
        )
    return settings


def insert_on_conflict(table: Table, dialect: str) -> sqlite.Insert | postgresql.Insert:
    """``INSERT`` into ``table`` for ``dialect``, with ``ON CONFLICT`` clauses.

    SQLite and PostgreSQL spell ``.on_conflict_do_nothing(index_elements=...)`` and
    ``.on_conflict_do_update(index_elements=..., set_=...)`` alike; only the statement class
    differs. Each dialect's package is imported on first use (PostgreSQL's is about 2.4 MB RSS
    that a process on SQLite never needs).

    Args:
        table: The table inserted into.
        dialect: ``connection.dialect.name``: ``postgresql``, else SQLite.

    Returns:
        The dialect's ``Insert`` statement.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def skip_locked(query: Any, dialect: str) -> Any:
    """Make a claim query skip rows other transactions hold (PostgreSQL ``FOR UPDATE SKIP LOCKED``).

    SQLite needs nothing: ``BEGIN IMMEDIATE`` already serialises writers.
    """
    return query.with_for_update(skip_locked=True) if dialect == "postgresql" else query
