"""The audit chain: append-only events, each carrying the SHA-256 of the one before.

``hash = SHA-256(canonical JSON of {event fields..., "prev_hash": previous hash})`` where the
canonical JSON has sorted keys, no insignificant whitespace and UTF-8 text (the shape of RFC 8785
for the strings, integers and booleans audit events hold). The first event of a tenant's chain
has ``prev_hash`` = 64 zeros. The head row of each tenant is updated in the same transaction as
the event, which serialises appends per tenant on every database.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.store._base import utcnow

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "ChainVerification",
    "append_event",
    "append_events",
    "canonical_json",
    "event_hash",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event of every chain."""


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
_RESERVE = (
    _HEADS.update()
    .where(_HEADS.c.tenant_id == bindparam("b_tenant"))
    .values(seq=_HEADS.c.seq + bindparam("b_count"))
    .returning(_HEADS.c.seq, _HEADS.c.hash)
)
_SET_HASH = (
    _HEADS.update()
    .where(_HEADS.c.tenant_id == bindparam("b_tenant"))
    .values(hash=bindparam("b_hash"))
)
_INSERT_EVENTS = _EVENTS.insert()


def append_events(connection: Connection, tenant_id: str, records: list[AuditRecord]) -> str:
    """Append events to the tenant's chain inside the caller's transaction.

    Three statements whatever the number of events: reserve the sequence numbers on the head
    row (which also takes the row lock that serialises appends), insert the events, store the
    new head hash.

    Returns:
        The hash of the last event appended (the head's hash if ``records`` is empty).
    """
    count = len(records)
    head = connection.execute(_RESERVE, {"b_tenant": tenant_id, "b_count": count}).one_or_none()
    if head is None:
        connection.execute(_HEADS.insert().values(tenant_id=tenant_id, seq=count, hash=""))
        last_seq, prev_hash = count, GENESIS_HASH
    else:
        last_seq, prev_hash = head.seq, head.hash
    if not count:
        return str(prev_hash)
    now = utcnow()
    rows = []
    for offset, record in enumerate(records):
        event = {
            "tenant_id": tenant_id,
            "seq": last_seq - count + 1 + offset,
            "occurred_at": now,
            "actor": record.actor,
            "action": record.action,
            "subject": record.subject,
            "outcome": record.outcome,
            "run_id": record.run_id,
            "trace_id": record.trace_id,
            "policy_decision_id": record.policy_decision_id,
            "details": record.details,
            "prev_hash": prev_hash,
        }
        event["hash"] = prev_hash = event_hash(event)
        rows.append(event)
    connection.execute(_INSERT_EVENTS, rows)
    connection.execute(_SET_HASH, {"b_tenant": tenant_id, "b_hash": prev_hash})
    return str(prev_hash)


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
) -> str:
    """Append one event inside the session's transaction (see :class:`AuditRecord`).

    Returns:
        The new event's hash.
    """
    record = AuditRecord(
        actor, action, subject, outcome, run_id, trace_id, policy_decision_id, details or {}
    )
    return await session.run_sync(
        lambda sync_session: append_events(sync_session.connection(), tenant_id, [record])
    )


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
    """

    ok: bool
    tenant_id: str
    events_checked: int
    first_bad_seq: int | None = None
    first_bad_id: int | None = None
    reason: str | None = None


async def verify_chain(
    session: AsyncSession, *, tenant_id: str, batch_size: int = 1000
) -> ChainVerification:
    """Recompute the tenant's chain from its first event and compare with the stored head.

    Detects an edited event (hash mismatch), a removed or reordered event (sequence gap or
    ``prev_hash`` mismatch) and a removed tail (head beyond the last event).
    """
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
    return ChainVerification(True, tenant_id, checked)


def _check(event: dict[str, Any], expected_seq: int, prev_hash: str) -> str | None:
    if event["seq"] != expected_seq:
        return f"expected seq {expected_seq}, found {event['seq']}: events were removed"
    if event["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous event's hash"
    if event_hash(event) != event["hash"]:
        return "the event's content does not match its hash: it was modified"
    return None
