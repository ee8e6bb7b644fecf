"""CLI: ``corral approvals``, ``corral approve`` and ``corral reject``.

Votes are cast as the principal whose credentials the CLI sends (``CORRAL_API_KEY``, else the
local admin's key), so a second person approves from their own shell with their own key.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient
from corral.cli._render import ago, table

__all__ = ["approvals", "approve", "reject"]


class StatusFilter(StrEnum):
    """Which approval requests to list."""

    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"
    all = "all"


def _what(approval: dict[str, Any]) -> str:
    if approval["tool"]:
        return f"{approval['tool']} {json.dumps(approval['arguments'], ensure_ascii=False)}"
    return str(approval["subject"])


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(approval: dict[str, Any]) -> str:
    lines = [
        f"approval {approval['id']}  {approval['status']}  ({approval['kind']})",
        f"  action:     {approval['action']} {approval['subject']}",
    ]
    if approval["run_id"]:
        lines.append(
            f"  run:        {approval['run_id']} ({approval['run_status']}), step "
            f"{approval['step_index']}, call {approval['call_index']}"
        )
    if approval["tool"]:
        lines.append(f"  arguments:  {json.dumps(approval['arguments'], ensure_ascii=False)}")
        lines.append(f"  digest:     {approval['arguments_digest']}")
    lines += [
        f"  reason:     {approval['reason']}",
        f"  requested:  by {approval['requested_by']} at {ago(approval['created_at'])}",
        f"  approvers:  {approval['received_approvals']} of {approval['required_approvals']} "
        f"from role {' or '.join(approval['approver_roles'])}",
        f"  expires:    {ago(approval['expires_at'])}",
    ]
    for vote in approval["votes"]:
        comment = f": {vote['comment']}" if vote["comment"] else ""
        person = vote.get("accountable") or vote["principal"]
        acting = f" for {person}" if person != vote["principal"] else ""
        lines.append(
            f"  vote:       {vote['vote']} by {vote['principal']}{acting} ({vote['role']}) at "
            f"{ago(vote['created_at'])}{comment}"
        )
    return "\n".join(lines)


def approvals(
    approval_id: Annotated[
        str | None, typer.Argument(help="Show this request in full instead of a list.")
    ] = None,
    status: Annotated[
        StatusFilter, typer.Option(help="Which requests to list.")
    ] = StatusFilter.pending,
    run: Annotated[
        str | None, typer.Option("--run", metavar="RUN", help="Only requests of this run.")
    ] = None,
) -> None:
    """List approval requests (pending ones by default, oldest first), or show one in full.

    A run whose tool call policy says needs approval waits AWAITING_APPROVAL
    until enough approvers approve it (it then continues) or one rejects it
    (it ends REJECTED). Approve with `corral approve ID`, reject with
    `corral reject ID --reason TEXT`.

    Acts as the principal of CORRAL_API_KEY (default: the local admin's key),
    so that a second person votes from their own shell with their own key.
    Voters need one of the roles the request names in the tenant; whoever
    requested the run may not approve it.

    Example: corral approvals --status all --run run_3f2a9c...
    """
    client = ApiClient()
    if approval_id is not None:
        typer.echo(_describe(client.get(f"/v1/approvals/{approval_id}")))
        return
    wanted = None if status is StatusFilter.all else status.value
    items: list[dict[str, Any]] = []
    after = None
    while True:  # every page: the pending queue is short, and history is asked for
        page = client.get("/v1/approvals", status=wanted, run_id=run, limit=500, after=after)
        items += page["items"]
        after = page["next"]
        if after is None:
            break
    if not items:
        typer.echo(f"No {'' if wanted is None else wanted + ' '}approval requests.")
        return
    typer.echo(
        table(
            ["ID", "STATUS", "RUN", "ACTION", "APPROVALS", "ROLES", "REQUESTED BY", "EXPIRES"],
            [
                [
                    a["id"],
                    a["status"],
                    a["run_id"] or "-",
                    _short(_what(a)),
                    f"{a['received_approvals']}/{a['required_approvals']}",
                    ",".join(a["approver_roles"]),
                    a["requested_by"],
                    ago(a["expires_at"]),
                ]
                for a in items
            ],
        )
    )


def approve(
    approval_id: Annotated[str, typer.Argument(help="The request (see `corral approvals`).")],
    comment: Annotated[
        str, typer.Option(help="What you checked, kept with your vote in the audit log.")
    ] = "",
) -> None:
    """Approve a pending approval request.

    Once the request has the approvals it needs from distinct approvers, its run
    is queued again and executes exactly the approved call. Exit 1 if you may not
    approve it, already voted, or it was decided or expired.

    Acts as the principal of CORRAL_API_KEY (default: the local admin's key),
    so that a second person votes from their own shell with their own key.
    Voters need one of the roles the request names in the tenant; whoever
    requested the run may not approve it.

    Example: CORRAL_PRINCIPAL=user:bob corral approve apr_3f2a9c... --comment "checked the diff"
    """
    result = ApiClient().post(f"/v1/approvals/{approval_id}/approve", {"comment": comment})
    received, required = result["received_approvals"], result["required_approvals"]
    if result["status"] == "approved":
        typer.echo(f"approval {approval_id} approved ({received} of {required} approvals).")
        if result["run_id"]:
            typer.echo(
                f"run {result['run_id']} is {result['run_status']} again and continues on a "
                f"worker; follow it with: corral describe run {result['run_id']}"
            )
    else:
        typer.echo(
            f"approval {approval_id}: your approval is recorded ({received} of {required}); it "
            f"waits for {required - received} more from role "
            f"{' or '.join(result['approver_roles'])}."
        )


def reject(
    approval_id: Annotated[str, typer.Argument(help="The request (see `corral approvals`).")],
    reason: Annotated[
        str, typer.Option(help="Why; kept in the audit log and shown as the run's error.")
    ],
) -> None:
    """Reject a pending approval request: its run ends REJECTED (approval_rejected).

    One rejection is enough, whatever the number of approvals the request
    needs. Exit 1 if you may not decide it, already voted, or it was decided
    or expired; exit 2 for a blank reason.

    Acts as the principal in CORRAL_PRINCIPAL (sent as the X-Corral-Principal
    header; default: the server's local admin), so that a second person can
    vote from their own shell. Voters need one of the roles the request names
    (CORRAL_GOVERNANCE__ROLES on the server); whoever requested the run may not
    approve it.

    Example: corral reject apr_3f2a9c... --reason "wrong branch"
    """
    result = ApiClient().post(f"/v1/approvals/{approval_id}/reject", {"reason": reason})
    typer.echo(f"approval {approval_id} rejected: {reason}")
    if result["run_id"]:
        typer.echo(f"run {result['run_id']} is {result['run_status']} (approval_rejected).")
