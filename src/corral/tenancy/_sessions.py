"""Portal sessions ended server-side: one logged-out session, or every session of a principal.

A session is refused when its id is in ``session_revocations`` or it was issued at or before
its principal's ``not_before`` in ``session_cutoffs``. Both are read from the store on every
request (nothing cached), so a session ended through one API replica is ended in all of them.
Rows that can no longer matter (past the session's expiry, or a cutoff older than the longest
session) are pruned whenever one is written.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, literal, select, union_all

from corral.audit import AuditRecord
from corral.store import Store, utcnow
from corral.tenancy._principal import Principal
from corral.tenancy._service import _audit
from corral.tenancy._tables import SessionCutoffRow, SessionRevocationRow

__all__ = ["end_session", "end_sessions_of", "session_ended"]


async def end_session(
    store: Store, principal: Principal, session_id: str, *, expires_at: datetime
) -> None:
    """Refuse session ``session_id`` of ``principal`` from now on (logout).

    Args:
        store: The store.
        principal: The session's principal (its tenant owns the row).
        session_id: The random id in the session's cookie.
        expires_at: When the session expires anyway (UTC); the row is pruned after it.
    """
    async with store.transaction(principal.tenant_id) as session:
        await session.execute(
            delete(SessionRevocationRow).where(
                SessionRevocationRow.tenant_id == principal.tenant_id,
                SessionRevocationRow.expires_at <= utcnow(),
            )
        )
        existing = await session.get(SessionRevocationRow, session_id)
        if existing is None:
            session.add(
                SessionRevocationRow(
                    tenant_id=principal.tenant_id,
                    session_id=session_id,
                    principal=principal.id,
                    expires_at=expires_at,
                )
            )


async def end_sessions_of(
    store: Store, caller: Principal, principal_id: str, *, max_session: timedelta
) -> datetime:
    """End every portal session of ``principal_id`` in the caller's tenant issued until now.

    The caller signs out everywhere (``principal_id`` is the caller's own id) or, with
    ``keys.manage`` (the route checks), signs another principal out. Audited as
    ``session.signed_out_everywhere`` or ``session.signed_out``.

    Args:
        store: The store.
        caller: Who asks.
        principal_id: Whose sessions end (``user:alice``, ``service:ci-bot``).
        max_session: The longest a session lives; older cutoffs are pruned.

    Returns:
        The cutoff: sessions issued at or before it (whole seconds, UTC) are refused. A
        session started in the same second is refused too; its owner logs in again.
    """
    now = utcnow().replace(microsecond=0)
    tenant_id = caller.tenant_id
    async with store.transaction(tenant_id) as session:
        await session.execute(
            delete(SessionCutoffRow).where(
                SessionCutoffRow.tenant_id == tenant_id,
                SessionCutoffRow.not_before <= now - max_session,
            )
        )
        row = await session.get(SessionCutoffRow, (tenant_id, principal_id))
        if row is None:
            session.add(
                SessionCutoffRow(
                    tenant_id=tenant_id, principal=principal_id, not_before=now, set_by=caller.id
                )
            )
        else:
            row.not_before, row.set_by = now, caller.id
        await session.flush()
        action = (
            "session.signed_out_everywhere" if principal_id == caller.id else "session.signed_out"
        )
        details = {"not_before": now.isoformat()}
        await _audit(
            session,
            tenant_id,
            AuditRecord(caller.id, action, principal_id, "success", details=details),
        )
    return now


async def session_ended(
    store: Store, principal: Principal, session_id: str, *, issued_at: datetime
) -> bool:
    """Whether session ``session_id`` of ``principal``, issued at ``issued_at``, was ended.

    One round trip: a primary-key lookup in each table.
    """
    tenant_id = principal.tenant_id
    query = union_all(
        select(literal(1)).where(
            SessionRevocationRow.session_id == session_id,
            SessionRevocationRow.tenant_id == tenant_id,
        ),
        select(literal(1)).where(
            SessionCutoffRow.tenant_id == tenant_id,
            SessionCutoffRow.principal == principal.id,
            SessionCutoffRow.not_before >= issued_at,
        ),
    ).limit(1)
    async with store.read(tenant_id) as session:
        return (await session.execute(query)).first() is not None
