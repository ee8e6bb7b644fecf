"""What the runtime asks of a run's approval requests, so it never reads the approvals table.

Both run on the caller's connection, inside its transaction (a run's checkpoint or its end).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, select

from corral.approvals._tables import ApprovalRow

__all__ = ["approved_calls", "withdraw_run_approvals"]

_APPROVALS = cast(Table, ApprovalRow.__table__)

_APPROVED_CALLS = select(
    _APPROVALS.c.call_index, _APPROVALS.c.arguments_digest, _APPROVALS.c.policy_ids
).where(
    _APPROVALS.c.run_id == bindparam("b_run"),
    _APPROVALS.c.step_index == bindparam("b_step"),
    _APPROVALS.c.status == "approved",
)


def approved_calls(
    connection: Connection, run_id: str, step_index: int
) -> dict[tuple[int, str], list[str]]:
    """The policies lifted for the approved tool calls of one step of a run.

    An approval covers exactly the call that was approved: its call index and the SHA-256
    digest of its canonical arguments.

    Args:
        connection: The caller's connection (its transaction).
        run_id: The run (``run_...``).
        step_index: The step (the run's ``step_count`` while it is in progress).

    Returns:
        ``{(call_index, arguments_digest): [policy id, ...]}``.
    """
    rows = connection.execute(_APPROVED_CALLS, {"b_run": run_id, "b_step": step_index})
    return {(row.call_index, row.arguments_digest): list(row.policy_ids) for row in rows}


def withdraw_run_approvals(connection: Connection, run_id: str, *, now: datetime) -> int:
    """Withdraw the pending requests of a run that ended otherwise (cancelled, killed, ...).

    Args:
        connection: The caller's connection (the transaction that ends the run).
        run_id: The run.
        now: When (the requests' ``decided_at``).

    Returns:
        How many requests were withdrawn.
    """
    result = connection.execute(
        _APPROVALS.update()
        .where(_APPROVALS.c.run_id == run_id, _APPROVALS.c.status == "pending")
        .values(status="withdrawn", decided_at=now)
    )
    return int(result.rowcount)
