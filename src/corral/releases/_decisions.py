"""Recording a release decision: a ``release_decisions`` row and its audit event, together."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table

from corral.audit import AuditRecord, append_events
from corral.releases._tables import ReleaseDecisionRow
from corral.store import new_id

__all__ = ["record_decision"]

_DECISIONS = cast(Table, ReleaseDecisionRow.__table__)


def record_decision(
    connection: Connection,
    *,
    tenant_id: str,
    subject_id: str,
    decision: str,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any],
    now: datetime,
) -> str:
    """Store ``decision`` about experiment or rollout ``subject_id`` and audit ``action``.

    Returns:
        The decision's id (``rdec_`` + 32 hex digits), also in the audit event's details.
    """
    decision_id = new_id("rdec")
    connection.execute(
        _DECISIONS.insert(),
        {
            "id": decision_id,
            "tenant_id": tenant_id,
            "subject_id": subject_id,
            "decision": decision,
            "details": details,
            "decided_by": actor,
            "created_at": now,
        },
    )
    record = AuditRecord(
        actor,
        action,
        subject,
        "success",
        details={**details, "decision": decision, "release_decision_id": decision_id},
    )
    append_events(connection, tenant_id, [record])
    return decision_id
