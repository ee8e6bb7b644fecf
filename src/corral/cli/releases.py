"""CLI: ``corral promote``, ``corral rollback`` and ``corral promotions``.

They act as the principal in ``CORRAL_PRINCIPAL`` when it is set (see ``corral.cli._client``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table
from corral.cli.registry import Output

__all__ = ["promote", "promotions", "rollback"]


def promote(
    target: Annotated[
        str,
        typer.Argument(
            metavar="AGENT@VERSION", help="e.g. repo-analyst@1.2.0.", show_default=False
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="Stage to promote to (staging, production...).")],
) -> None:
    """Promote a version of an agent to a stage (bound now, or once approvals arrive).

    Example: corral promote repo-analyst@1.2.0 --to production
    """
    name, _, version = target.partition("@")
    if not name or not version:
        fail(
            f"{target!r} names no version; write AGENT@VERSION, e.g. {name or 'my-agent'}@1.2.0 "
            f"(versions: `corral describe agent {name or 'AGENT'}`).",
            code=2,
        )
    result = ApiClient().post(f"/v1/agents/{name}/promotions", {"version": version, "stage": to})
    if result["status"] == "done":
        was = f" (was {result['previous_version']})" if result["previous_version"] else ""
        typer.echo(f"agent/{name} {version} promoted to {to}{was}  {result['digest']}")
        return
    approval = result["approval_id"]
    roles = " or ".join(result["approver_roles"]) or "an approver"
    previous = result["previous_version"]
    meanwhile = f"{to} still runs {previous}" if previous else f"nothing runs in {to} until then"
    typer.echo(
        f"agent/{name} {version} -> {to} is pending approval {approval}: it needs "
        f"{result['required_approvals']} approval(s) from {roles}; {meanwhile}."
    )
    typer.echo(f"Approve with `corral approve {approval}` (reject: `corral reject {approval}`).")


def rollback(
    agent: Annotated[str, typer.Argument(metavar="AGENT", help="Agent name.", show_default=False)],
    stage: Annotated[str, typer.Option("--stage", help="Stage to roll back (not dev).")],
) -> None:
    """Re-bind a stage to the version it ran before (run it again to go further back).

    Needs the permission to promote to the stage, but no approvals: it is the emergency exit.

    Example: corral rollback repo-analyst --stage production
    """
    result = ApiClient().post(f"/v1/agents/{agent}/rollback", {"stage": stage})
    typer.echo(
        f"agent/{agent} {stage} rolled back to {result['version']} "
        f"(was {result['previous_version']})  {result['digest']}"
    )


def _row(promotion: dict[str, Any]) -> list[Any]:
    status = promotion["status"]
    if status == "pending_approval":
        status = f"pending ({promotion['approval_id']})"
    return [
        ago(promotion["created_at"]),
        promotion["kind"],
        promotion["stage"],
        promotion["version"],
        promotion["previous_version"] or "-",
        status,
        promotion["actor"],
    ]


def promotions(
    agent: Annotated[str, typer.Argument(metavar="AGENT", help="Agent name.", show_default=False)],
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 50,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = (
        Output.table
    ),
) -> None:
    """Show an agent's stages and its promotions and rollbacks, newest first."""
    client = ApiClient()
    history = client.get(f"/v1/agents/{agent}/promotions", limit=limit)
    if output is Output.json:
        typer.echo(json.dumps(history, indent=2))
        return
    stages = client.get(f"/v1/agents/{agent}/stages")
    typer.echo(
        table(
            ["STAGE", "VERSION", "DIGEST", "BOUND BY", "BOUND"],
            [
                [s["stage"], s["version"], s["digest"], s["bound_by"], ago(s["bound_at"])]
                for s in stages
            ],
        )
    )
    typer.echo("")
    if not history:
        typer.echo(f"No promotions of {agent!r} yet: `corral promote {agent}@VERSION --to STAGE`.")
        return
    headers = ["WHEN", "KIND", "STAGE", "VERSION", "FROM", "STATUS", "BY"]
    typer.echo(table(headers, [_row(p) for p in history]))
