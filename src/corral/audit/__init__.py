"""The audit chain: append-only, hash-chained events per tenant."""

from corral.audit._chain import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerification,
    append_event,
    append_events,
    canonical_json,
    event_hash,
    verify_chain,
)

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
