"""The approvals functions the runtime calls for a run's requests (instead of their table)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from corral.approvals import approved_calls, withdraw_run_approvals
from corral.approvals._tables import ApprovalRow
from corral.store import new_id, utcnow


def request(run_id: str, step: int, call: int, status: str, **fields: Any) -> ApprovalRow:
    values: dict[str, Any] = {
        "id": new_id("apr"),
        "tenant_id": "default",
        "kind": "tool_call",
        "status": status,
        "action": "tool.call",
        "subject": "tool:fs.write_file",
        "run_id": run_id,
        "step_index": step,
        "call_index": call,
        "idempotency_key": f"{run_id}:{step}:{call}",
        "arguments_redacted": {},
        "arguments_digest": f"sha256:{call}",
        "reason": "writes need approval",
        "approver_roles": ["approver"],
        "required_approvals": 1,
        "policy_ids": [f"policy-{call}"],
        "policy_decision_id": new_id("pd"),
        "requested_by": "user:test",
        "expires_at": utcnow() + timedelta(hours=1),
    }
    values.update(fields)
    return ApprovalRow(**values)


async def test_approved_calls_and_withdrawal_of_a_runs_requests(make_platform) -> None:
    platform = await make_platform()
    async with platform.store.transaction("default") as session:
        session.add_all(
            [
                request("run_a", 2, 0, "approved"),
                request("run_a", 2, 1, "pending"),
                request("run_a", 2, 2, "rejected"),
                request("run_a", 1, 0, "approved"),
                request("run_b", 2, 0, "pending"),
            ]
        )
    now = utcnow()
    async with platform.store.transaction("default") as session:
        approved = await session.run_sync(
            lambda sync: approved_calls(sync.connection(), "run_a", 2)
        )
        withdrawn = await session.run_sync(
            lambda sync: withdraw_run_approvals(sync.connection(), "run_a", now=now)
        )
        again = await session.run_sync(
            lambda sync: withdraw_run_approvals(sync.connection(), "run_a", now=now)
        )
    assert approved == {(0, "sha256:0"): ["policy-0"]}
    assert (withdrawn, again) == (1, 0)
    async with platform.store.transaction("default") as session:
        statuses = {
            (row.run_id, row.step_index, row.call_index): row.status
            for row in (await session.execute(select(ApprovalRow))).scalars()
        }
    assert statuses == {
        ("run_a", 2, 0): "approved",
        ("run_a", 2, 1): "withdrawn",
        ("run_a", 2, 2): "rejected",
        ("run_a", 1, 0): "approved",
        ("run_b", 2, 0): "pending",
    }
