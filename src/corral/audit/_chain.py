"""The audit chain: append-only events, each carrying the SHA-256 of the one before.

``hash = SHA-256(canonical JSON of {event fields..., "prev_hash": previous hash})`` where the
canonical JSON has sorted keys, no insignificant whitespace and UTF-8 text (the shape of RFC 8785
for the strings, integers and booleans audit events hold). The first event of a tenant's chain
has ``prev_hash`` = 64 zeros.

Appending never waits for another writer (ADR 0006). The tenant's head row
(``audit_heads``) says where the chain ends; a transaction that appends takes it with
``FOR UPDATE SKIP LOCKED``:

* if it gets the head, it first chains the tenant's committed events that are not chained yet
  (oldest id first), then its own, and moves the head: everything in its own transaction;
* if another transaction holds the head (PostgreSQL only: SQLite has one writer), it inserts
  its events *unchained* (``seq``, ``prev_hash`` and ``hash`` empty) and goes on. The next
  transaction that holds the head chains them, in the order it finds them committed, as a
  transparency log's sequencer does; so does :func:`chain_pending`, which a background task of
  the appending process runs shortly after (and :func:`verify_chain` before it verifies).

The chain order is the chaining order. A chained event is never changed again: on PostgreSQL a
trigger refuses every UPDATE and DELETE of audit rows except the one that chains an unchained
row without touching its content (migration 0010).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.store import execute_direct, insert_on_conflict, insert_rows, utcnow

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "ChainVerification",
    "append_event",
    "append_events",
    "canonical_json",
    "chain_pending",
    "event_hash",
    "settle_chains",
    "verify_chain",
]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event of every chain."""

CHAIN_BATCH = 500
"""Most unchained events one transaction chains in one pass."""


def canonical_json(value: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the bytes that are hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hashed_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": event["tenant_id"],
        "seq": event["seq"],
        "occurred_at": _timestamp(event["occurred_at"]),
        "actor": event["actor"],
        "action": event["action"],
        "subject": event["subject"],
        "outcome": event["outcome"],
        "run_id": event["run_id"],
        "trace_id": event["trace_id"],
        "policy_decision_id": event["policy_decision_id"],
        "details": event["details"],
        "prev_hash": event["prev_hash"],
    }


def event_hash(event: dict[str, Any]) -> str:
    """The SHA-256 (hex) of one event's fields and its ``prev_hash``."""
    return hashlib.sha256(canonical_json(_hashed_fields(event))).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One event to append; the chain adds ``seq``, ``occurred_at``, ``prev_hash`` and ``hash``.

    Attributes:
        actor: Principal that caused the event (``user:alice``, ``system``, ``worker:...``).
        action: Dotted verb (``run.created``, ``tool.call``, ``agent.version_created``).
        subject: What it happened to (``run:run_...``, ``agent:repo-analyst@0.1.0``).
        outcome: ``success``, ``failure``, ``denied``...
        run_id: Related run, if any.
        trace_id: Related trace (W3C trace id), if any.
        policy_decision_id: The stored policy decision that allowed or refused the action.
        details: Extra JSON-safe fields (strings, integers, booleans, lists, objects).
    """

    actor: str
    action: str
    subject: str
    outcome: str
    run_id: str | None = None
    trace_id: str | None = None
    policy_decision_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


_EVENTS = cast(Table, AuditEventRow.__table__)
_HEADS = cast(Table, AuditHeadRow.__table__)
# Statements are built once: building one costs far more than executing it (~5x on SQLite).
_READ_HEAD = select(_HEADS.c.seq, _HEADS.c.hash).where(_HEADS.c.tenant_id == bindparam("b_tenant"))
_TAKE_HEAD = _READ_HEAD.with_for_update(skip_locked=True)
_UNCHAINED = (
    select(_EVENTS)
    .where(_EVENTS.c.tenant_id == bindparam("b_tenant"), _EVENTS.c.hash.is_(None))
    .order_by(_EVENTS.c.id)
    .limit(bindparam("b_limit"))
)
_COUNT_UNCHAINED = (
    select(func.count())
    .select_from(_EVENTS)
    .where(_EVENTS.c.tenant_id == bindparam("b_tenant"), _EVENTS.c.hash.is_(None))
)
_CHAIN = (
    _EVENTS.update()
    .where(_EVENTS.c.id == bindparam("b_id"), _EVENTS.c.hash.is_(None))
    .values(seq=bindparam("b_seq"), prev_hash=bindparam("b_prev"), hash=bindparam("b_hash"))
)
_MOVE_HEAD = (
    _HEADS.update()
    .where(_HEADS.c.tenant_id == bindparam("b_tenant"))
    .values(seq=bindparam("b_seq"), hash=bindparam("b_hash"))
)
_INSERT_EVENTS = _EVENTS.insert()


def _take_head(
    connection: Connection, tenant_id: str, *, create: bool = True
) -> tuple[int, str] | None:
    """Lock the tenant's head row; ``None`` if another transaction holds it (PostgreSQL).

    A tenant without a head gets one (``seq`` 0, the genesis hash), locked by this transaction
    (unless ``create`` is false: then ``None``).
    On PostgreSQL, two first appends of a tenant at once: the second waits for the first to
    commit (once per tenant), then finds the head held or takes it. On SQLite the transaction
    already is the only writer: the head is read.
    """
    params = {"b_tenant": tenant_id}
    if connection.dialect.name != "postgresql":
        heads = execute_direct(connection, _READ_HEAD, params)
        if not heads:
            if not create:
                return None
            connection.execute(
                _HEADS.insert().values(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)
            )
            return 0, GENESIS_HASH
        return int(heads[0][0]), str(heads[0][1])
    # Driver values (an integer, a string): no result processing for this per-append read.
    taken = execute_direct(connection, _TAKE_HEAD, params)
    if not taken:
        if not create or execute_direct(connection, _READ_HEAD, params):
            return None  # held by another transaction (or none yet: nothing to chain)
        connection.execute(
            insert_on_conflict(_HEADS, "postgresql")
            .values(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=[_HEADS.c.tenant_id])
        )
        taken = execute_direct(connection, _TAKE_HEAD, params)
    return (int(taken[0][0]), str(taken[0][1])) if taken else None


def _chain_unchained(
    connection: Connection, tenant_id: str, last_seq: int, prev_hash: str, limit: int
) -> tuple[int, str, int]:
    """Chain up to ``limit`` committed unchained events after ``(last_seq, prev_hash)``.

    The caller holds the head. Returns the new ``(last_seq, prev_hash)`` and how many events
    were chained.
    """
    rows = connection.execute(_UNCHAINED, {"b_tenant": tenant_id, "b_limit": limit}).mappings()
    links = []
    for row in rows:
        event = dict(row)
        last_seq += 1
        event["seq"], event["prev_hash"] = last_seq, prev_hash
        prev_hash = event_hash(event)
        links.append(
            {
                "b_id": row["id"],
                "b_seq": last_seq,
                "b_prev": event["prev_hash"],
                "b_hash": prev_hash,
            }
        )
    if links:
        connection.execute(_CHAIN, links)
    return last_seq, prev_hash, len(links)


def append_events(connection: Connection, tenant_id: str, records: list[AuditRecord]) -> str | None:
    """Append events to the tenant's chain inside the caller's transaction.

    Never waits for another appender. If this transaction gets the tenant's head (always on
    SQLite), it chains the committed unchained events it finds (at most :data:`CHAIN_BATCH`),
    then ``records``, and moves the head. If another transaction holds the head (PostgreSQL),
    ``records`` are inserted unchained and this process chains them shortly after commit (see
    the module docstring); until then they have no ``seq`` and are not part of the chain.

    Returns:
        The hash of the last event appended, or ``None`` if it was appended unchained (or
        ``records`` is empty).
    """
    if not records:
        return None
    head = _take_head(connection, tenant_id)
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "seq": None,
            "occurred_at": now,
            "actor": record.actor,
            "action": record.action,
            "subject": record.subject,
            "outcome": record.outcome,
            "run_id": record.run_id,
            "trace_id": record.trace_id,
            "policy_decision_id": record.policy_decision_id,
            "details": record.details,
            "prev_hash": None,
            "hash": None,
        }
        for record in records
    ]
    if head is None:
        connection.execute(_INSERT_EVENTS, rows)
        _sequencer(connection.engine).wake(tenant_id)
        return None
    last_seq, prev_hash = head
    if connection.dialect.name == "postgresql":
        last_seq, prev_hash, _ = _chain_unchained(
            connection, tenant_id, last_seq, prev_hash, CHAIN_BATCH
        )
    for event in rows:
        last_seq += 1
        event["seq"], event["prev_hash"] = last_seq, prev_hash
        event["hash"] = prev_hash = event_hash(event)
    insert_rows(connection, _EVENTS, rows)
    execute_direct(
        connection, _MOVE_HEAD, {"b_tenant": tenant_id, "b_seq": last_seq, "b_hash": prev_hash}
    )
    return prev_hash


def chain_pending(connection: Connection, tenant_id: str) -> int | None:
    """The sequencer's pass: chain every committed unchained event of the tenant, oldest first.

    Runs inside the caller's transaction (commit it to publish the chain).

    Returns:
        How many events were chained, or ``None`` if another transaction holds the tenant's
        head (that transaction chains them before it commits) or the tenant has none.
    """
    # A tenant without a head has no unchained events (they are only appended while another
    # transaction holds the head): no head is created here, so a pass never waits.
    head = _take_head(connection, tenant_id, create=False)
    if head is None:
        return None
    last_seq, prev_hash = head
    total = 0
    while True:
        last_seq, prev_hash, chained = _chain_unchained(
            connection, tenant_id, last_seq, prev_hash, CHAIN_BATCH
        )
        total += chained
        if chained < CHAIN_BATCH:
            break
    if total:
        connection.execute(
            _MOVE_HEAD, {"b_tenant": tenant_id, "b_seq": last_seq, "b_hash": prev_hash}
        )
    return total


_SCOPE = text("SELECT set_config('corral.tenant_id', :scope, true)")
"""The row-level security scope (see ``corral.store``): the sequencer chains one tenant."""


async def _chain_now(engine: AsyncEngine, tenant_id: str) -> int | None:
    """:func:`chain_pending` in a transaction of its own."""
    async with engine.begin() as connection:
        await connection.execute(_SCOPE, {"scope": tenant_id})
        return await connection.run_sync(chain_pending, tenant_id)


class _Sequencer:
    """Chains, in the background of the process, the events it appended unchained.

    Woken by :func:`append_events` when it appends unchained (before that transaction
    commits), it runs a pass every :attr:`interval` seconds until :attr:`linger` seconds after
    the last wake-up, so events committed some time after their wake-up are chained too. It
    stops as soon as the engine is disposed (its pool replaced): a closed platform opens no
    connection, and a connection used while it was disposed is closed, not pooled.
    """

    interval = 0.05
    linger = 0.5

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.woken: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.pool = engine.pool
        self.hurry: asyncio.Event | None = None
        """Set by :meth:`settle`: the task passes now, then stops."""

    def wake(self, tenant_id: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): the next append chains
            return
        self.woken[tenant_id] = time.monotonic()
        if self.task is None or self.task.done():
            self.pool = self.engine.pool
            self.hurry = asyncio.Event()
            self.task = loop.create_task(self._run(self.hurry), name="corral audit sequencer")

    async def settle(self) -> None:
        """Run the pending passes now and wait for the task to end (the process is closing)."""
        task, hurry = self.task, self.hurry
        if task is None or task.done() or hurry is None:
            return
        if task.get_loop() is not asyncio.get_running_loop():  # its loop is gone or elsewhere
            return
        hurry.set()
        await task

    async def _run(self, hurry: asyncio.Event) -> None:
        engine = AsyncEngine(self.engine)
        while self.woken:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), self.interval)
            for tenant_id, woken_at in list(self.woken.items()):
                if self.engine.pool is not self.pool:  # disposed: the platform is closing
                    self.woken.clear()
                    return
                try:
                    await self._pass(engine, tenant_id)
                except Exception as exc:  # the next append or pass chains them
                    log.warning("chaining audit events of %r failed: %s", tenant_id, exc)
                if hurry.is_set() or (
                    time.monotonic() - woken_at > self.linger
                    and self.woken.get(tenant_id) == woken_at
                ):
                    del self.woken[tenant_id]

    async def _pass(self, engine: AsyncEngine, tenant_id: str) -> None:
        async with engine.connect() as connection:
            async with connection.begin():
                await connection.execute(_SCOPE, {"scope": tenant_id})
                await connection.run_sync(chain_pending, tenant_id)
            if self.engine.pool is not self.pool:
                await connection.invalidate()


_SEQUENCERS: weakref.WeakKeyDictionary[Engine, _Sequencer] = weakref.WeakKeyDictionary()


def _sequencer(engine: Engine) -> _Sequencer:
    sequencer = _SEQUENCERS.get(engine)
    if sequencer is None:
        sequencer = _SEQUENCERS[engine] = _Sequencer(engine)
    return sequencer


async def settle_chains(engine: AsyncEngine) -> None:
    """Chain now what this process appended unchained, and stop its background sequencer.

    Call it before disposing of ``engine`` (:meth:`corral.platform.Platform.close` does): the
    sequencer's pending passes run at once instead of after their interval, so no event this
    process appended is left unchained at shutdown. An event whose tenant's head another
    transaction holds stays unchained; that transaction chains it before it commits. A pass
    that fails is logged, and the next append or :func:`verify_chain` chains the events.

    Args:
        engine: The store's engine (the one the events were appended through).
    """
    sequencer = _SEQUENCERS.get(engine.sync_engine)
    if sequencer is not None:
        await sequencer.settle()


async def append_event(
    session: AsyncSession,
    *,
    tenant_id: str,
    actor: str,
    action: str,
    subject: str,
    outcome: str,
    run_id: str | None = None,
    trace_id: str | None = None,
    policy_decision_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> str | None:
    """Append one event inside the session's transaction (see :class:`AuditRecord`).

    Returns:
        The new event's hash, or ``None`` if it was appended unchained (see
        :func:`append_events`).
    """
    record = AuditRecord(
        actor, action, subject, outcome, run_id, trace_id, policy_decision_id, details or {}
    )

    def append(sync_session: Session) -> str | None:
        return append_events(sync_session.connection(), tenant_id, [record])

    return await session.run_sync(append)


@dataclass(frozen=True)
class ChainVerification:
    """Result of :func:`verify_chain`.

    Attributes:
        ok: The whole chain recomputed and matched.
        tenant_id: Which chain.
        events_checked: Events read.
        first_bad_seq: Sequence number of the first event that does not verify, or ``None``.
        first_bad_id: Row id of that event, or ``None``.
        reason: Why it does not verify.
        unchained: Events committed but not chained yet (appended while another transaction
            held the chain's head, after the sequencer's pass this verification ran first).
            They are not part of the chain yet: not verified, and not a fault.
    """

    ok: bool
    tenant_id: str
    events_checked: int
    first_bad_seq: int | None = None
    first_bad_id: int | None = None
    reason: str | None = None
    unchained: int = 0


async def verify_chain(
    session: AsyncSession, *, tenant_id: str, batch_size: int = 1000
) -> ChainVerification:
    """Recompute the tenant's chain from its first event and compare with the stored head.

    Detects an edited event (hash mismatch), a removed or reordered event (sequence gap or
    ``prev_hash`` mismatch) and a removed tail (head beyond the last event). On PostgreSQL it
    first chains the tenant's committed unchained events (:func:`chain_pending`, in a
    transaction of its own); events still unchained are counted in ``unchained``.
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await _chain_now(connection.engine, tenant_id)
    prev_hash, expected_seq, checked, last_id = GENESIS_HASH, 1, 0, None
    columns = [c.name for c in AuditEventRow.__table__.columns]
    while True:
        rows = (
            await session.execute(
                select(AuditEventRow.__table__)
                .where(AuditEventRow.tenant_id == tenant_id, AuditEventRow.seq >= expected_seq)
                .order_by(AuditEventRow.seq)
                .limit(batch_size)
            )
        ).all()
        for row in rows:
            event = dict(zip(columns, row, strict=True))
            checked += 1
            bad = _check(event, expected_seq, prev_hash)
            if bad:
                return ChainVerification(False, tenant_id, checked, event["seq"], event["id"], bad)
            prev_hash, expected_seq, last_id = event["hash"], expected_seq + 1, event["id"]
        if len(rows) < batch_size:
            break
    head = await session.get(AuditHeadRow, tenant_id)
    last_seq = expected_seq - 1
    if head is not None and head.seq == last_seq and last_seq and head.hash != prev_hash:
        return ChainVerification(
            False,
            tenant_id,
            checked,
            last_seq,
            last_id,
            "the last event's hash does not match the chain head: it was modified or replaced",
        )
    if head is not None and head.seq != last_seq:
        return ChainVerification(
            False,
            tenant_id,
            checked,
            last_seq + 1,
            None,
            f"the chain head is at seq {head.seq} but the events end at seq {last_seq}: "
            "events were removed from the end",
        )
    unchained = (await session.execute(_COUNT_UNCHAINED, {"b_tenant": tenant_id})).scalar_one()
    return ChainVerification(True, tenant_id, checked, unchained=int(unchained))


def _check(event: dict[str, Any], expected_seq: int, prev_hash: str) -> str | None:
    if event["seq"] != expected_seq:
        return f"expected seq {expected_seq}, found {event['seq']}: events were removed"
    if event["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous event's hash"
    if event_hash(event) != event["hash"]:
        return "the event's content does not match its hash: it was modified"
    return None
