"""CLI: ``corral cancel``, ``corral runs resolve`` and ``corral kill-switch``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table

__all__ = ["cancel", "kill_switch_app", "runs_app"]


def cancel(
    run_id: Annotated[str, typer.Argument(help="Run id (see `corral get runs`).")],
) -> None:
    """Cancel a run: a queued or paused one ends now; a running one stops at its next check.

    A running run starts no new step or tool call once the cancel is recorded,
    and an in-flight model call is abandoned; its worker then ends it CANCELLED.
    Exit 1 if the run already ended.

    Example: corral cancel run_3f2a9c...
    """
    run = ApiClient().post(f"/v1/runs/{run_id}/cancel", None)
    if run["status"] == "CANCELLED":
        typer.echo(f"run {run_id} CANCELLED: it was not running, so it ended now.")
    elif run["status"] == "RUNNING":
        typer.echo(
            f"run {run_id} is RUNNING: cancel requested; its worker ends it CANCELLED before "
            "the next step or tool call (an in-flight model call is abandoned)."
        )
        typer.echo(f"Check it with: corral describe run {run_id}")
    else:  # it ended on its own between the request and the answer
        typer.echo(f"run {run_id} ended {run['status']} ({run['terminal_reason']}).")


runs_app = typer.Typer(
    help="Act on runs: resolve a tool call left in doubt. (List runs with `corral get runs`.)",
    no_args_is_help=True,
)


class Resolution(StrEnum):
    """How an in-doubt tool call is settled."""

    done = "done"
    retry = "retry"
    failed = "failed"


@runs_app.command("resolve")
def resolve(
    run_id: Annotated[str, typer.Argument(help="An IN_DOUBT run (see `corral get runs`).")],
    resolution: Annotated[
        Resolution,
        typer.Option(
            "--as",
            help="done: the effect took place, do not run the call again; retry: run it again "
            "(same idempotency key); failed: record it failed, the model sees the failure.",
        ),
    ],
    comment: Annotated[
        str, typer.Option(help="Why (what you checked), kept in the audit log.")
    ] = "",
) -> None:
    """Settle the in-doubt tool call of an IN_DOUBT run, and queue the run again.

    A run is IN_DOUBT when its worker died during a side-effecting tool call
    that does not honour idempotency keys: nobody knows whether the effect took
    place. Check the system the tool acts on, then say what happened.

    Example: corral runs resolve RUN_ID --as done --comment "ticket exists"
    """
    body = {"resolution": resolution.value, "comment": comment}
    result = ApiClient().post(f"/v1/runs/{run_id}/resolve", body)
    typer.echo(
        f"tool call {result['idempotency_key']} resolved as {result['resolution']}; "
        f"run {run_id} is {result['run']['status']} again and continues on a worker."
    )
    typer.echo(f"Follow it with: corral describe run {run_id}")


kill_switch_app = typer.Typer(
    help="Stop the runs of an agent, a tenant or the whole platform, and let them start again.",
    no_args_is_help=True,
)

_AgentOption = Annotated[
    str | None, typer.Option("--agent", metavar="NAME", help="One agent of your tenant.")
]
_TenantOption = Annotated[
    str | None, typer.Option("--tenant", metavar="TENANT", help="Every agent of a tenant.")
]
_AllOption = Annotated[bool, typer.Option("--all", help="Every run on the platform.")]


def _scope(agent: str | None, tenant: str | None, everything: bool) -> tuple[str, str]:
    """``(scope, target)`` from exactly one of ``--agent``, ``--tenant``, ``--all``."""
    chosen = [
        (scope, target)
        for scope, target in (
            ("agent", agent),
            ("tenant", tenant),
            ("platform", "*" if everything else None),
        )
        if target
    ]
    if len(chosen) != 1:
        fail(
            "choose exactly one of --agent NAME, --tenant TENANT or --all (the whole platform).",
            code=2,
        )
    return chosen[0]


def _flag(switch: dict[str, Any]) -> str:
    scope, target = switch["scope"], switch["target"]
    return {"agent": f"--agent {target}", "tenant": f"--tenant {target}"}.get(scope, "--all")


@kill_switch_app.command("engage")
def engage(
    reason: Annotated[
        str,
        typer.Option(help="Why; recorded in the audit log and shown to every refused caller."),
    ],
    agent: _AgentOption = None,
    tenant: _TenantOption = None,
    everything: _AllOption = False,
) -> None:
    """Stop runs: no new run starts (HTTP 423), queued and paused runs end KILLED now.

    Running runs end KILLED at their next check, before a step or a tool call.
    Exit 1 if the same switch is already engaged.

    Example: corral kill-switch engage --agent repo-analyst --reason "INC-42"
    """
    scope, target = _scope(agent, tenant, everything)
    body = {"scope": scope, "target": target, "reason": reason}
    switch = ApiClient().post("/v1/kill-switches", body)
    typer.echo(
        f"kill switch '{scope}:{switch['target']}' engaged by {switch['engaged_by']}: "
        f"{switch['reason']}"
    )
    typer.echo(
        f"{switch['killed_runs']} queued or paused run(s) killed; running runs stop before "
        "their next step or tool call."
    )
    typer.echo(f"Release it with: corral kill-switch release {_flag(switch)}")


@kill_switch_app.command("release")
def release(
    agent: _AgentOption = None,
    tenant: _TenantOption = None,
    everything: _AllOption = False,
) -> None:
    """Release an engaged kill switch: new runs may start again. Exit 1 if none is engaged.

    Runs it killed stay KILLED; start them again with `corral run`.

    Example: corral kill-switch release --agent repo-analyst
    """
    scope, target = _scope(agent, tenant, everything)
    switch = ApiClient().post("/v1/kill-switches/release", {"scope": scope, "target": target})
    typer.echo(
        f"kill switch '{scope}:{switch['target']}' released by {switch['released_by']} "
        f"(engaged by {switch['engaged_by']} at {ago(switch['engaged_at'])}: "
        f"{switch['reason']}); new runs may start."
    )


@kill_switch_app.command("list")
def list_switches(
    include_released: Annotated[
        bool, typer.Option("--include-released", help="Also list released switches.")
    ] = False,
) -> None:
    """List engaged kill switches of your tenant and of the platform, newest first.

    Example: corral kill-switch list --include-released
    """
    switches = ApiClient().get("/v1/kill-switches", include_released=include_released)
    if not switches:
        typer.echo("No kill switches." if include_released else "No kill switch is engaged.")
        return
    typer.echo(
        table(
            ["SCOPE", "TARGET", "ENGAGED BY", "ENGAGED", "RELEASED", "REASON"],
            [
                [
                    s["scope"],
                    s["target"],
                    s["engaged_by"],
                    ago(s["engaged_at"]),
                    f"{ago(s['released_at'])} by {s['released_by']}" if s["released_at"] else "-",
                    s["reason"],
                ]
                for s in switches
            ],
        )
    )
