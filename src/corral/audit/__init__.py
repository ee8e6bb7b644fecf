"""The audit chain: append-only, hash-chained events per tenant."""

from corral.audit._chain import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerification,
    append_event,
    append_events,
    canonical_json,
    event_hash,
    settle_chains,
    verify_chain,
)
from corral.audit._tables import AuditEventRow

__all__ = [
    "GENESIS_HASH",
    "AuditEventRow",
    "AuditRecord",
    "ChainVerification",
    "append_event",
    "append_events",
    "canonical_json",
    "event_hash",
    "settle_chains",
    "verify_chain",
]
