"""Audit rows: an append-only hash chain per tenant, and the chain's head."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin

__all__ = ["AuditEventRow", "AuditHeadRow"]

_UNCHAINED_INDEX = Index(
    "ix_audit_events_unchained", "tenant_id", "id", sqlite_where=text("hash IS NULL")
)
"""Partial on both databases (migration 0010). Its ``postgresql_where`` is set when the table is
created on PostgreSQL (:func:`_partial_on_postgresql`): a ``postgresql_*`` argument here would
import SQLAlchemy's PostgreSQL dialect (about 2.4 MB RSS) in every process, SQLite ones too."""


class AuditEventRow(TenantMixin, Base):
    """An audit event; ``hash`` = SHA-256 of the canonical JSON of the event and ``prev_hash``.

    ``seq``, ``prev_hash`` and ``hash`` are empty while the event is committed but not chained
    yet (see :mod:`corral.audit._chain`); chaining sets them once.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "seq"),
        _UNCHAINED_INDEX,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    seq: Mapped[int | None] = mapped_column(BigInteger)
    """Position in the tenant's chain, from 1; ``None`` until the event is chained."""
    occurred_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    policy_decision_id: Mapped[str | None] = mapped_column(String(40))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The last chained event of each tenant's chain.

    Its row lock says who may chain: a transaction that holds it chains; the others append
    unchained rather than wait (see :mod:`corral.audit._chain`).
    """

    __tablename__ = "audit_heads"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


@event.listens_for(AuditEventRow.__table__, "before_create")
def _partial_on_postgresql(_table: Table, connection: Connection, **_kw: Any) -> None:
    if connection.dialect.name == "postgresql":
        _UNCHAINED_INDEX.dialect_kwargs["postgresql_where"] = text("hash IS NULL")
