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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.store._base import utcnow

__all__ = [
    "GENESIS_HASH",
    "ChainVerification",
    "append_event",
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
    """Append one event to the tenant's chain inside the caller's transaction.

    Args:
        session: A session inside the transaction that makes the audited change.
        tenant_id: Whose chain.
        actor: Principal that caused the event (``user:alice``, ``system``, ``worker:...``).
        action: Dotted verb (``run.created``, ``tool.call``, ``agent.version_created``).
        subject: What it happened to (``run:run_...``, ``agent:repo-analyst@0.1.0``).
        outcome: ``success``, ``failure``, ``denied``...
        run_id: Related run, if any.
        trace_id: Related trace (W3C trace id), if any.
        policy_decision_id: The stored policy decision that allowed or refused the action.
        details: Extra JSON-safe fields (strings, integers, booleans, lists, objects).

    Returns:
        The new event's hash.
    """
    head = (
        await session.execute(
            update(AuditHeadRow)
            .where(AuditHeadRow.tenant_id == tenant_id)
            .values(seq=AuditHeadRow.seq + 1)
            .returning(AuditHeadRow.seq, AuditHeadRow.hash)
        )
    ).one_or_none()
    if head is None:
        await session.execute(insert(AuditHeadRow).values(tenant_id=tenant_id, seq=1, hash=""))
        seq, prev_hash = 1, GENESIS_HASH
    else:
        seq, prev_hash = head.seq, head.hash
    event = {
        "tenant_id": tenant_id,
        "seq": seq,
        "occurred_at": utcnow(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "outcome": outcome,
        "run_id": run_id,
        "trace_id": trace_id,
        "policy_decision_id": policy_decision_id,
        "details": details or {},
        "prev_hash": prev_hash,
    }
    digest = event_hash(event)
    await session.execute(insert(AuditEventRow).values(**event, hash=digest))
    await session.execute(
        update(AuditHeadRow).where(AuditHeadRow.tenant_id == tenant_id).values(hash=digest)
    )
    return digest


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
