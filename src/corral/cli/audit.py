"""CLI: ``corral audit verify`` and ``corral audit events``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from corral.cli._client import ApiClient
from corral.cli._render import ago, table

__all__ = ["app"]

app = typer.Typer(help="Read and verify the audit chain.", no_args_is_help=True)


@app.command()
def verify() -> None:
    """Recompute the audit hash chain; exit 1 naming the first bad event if it is broken."""
    result = ApiClient(timeout_seconds=600).get("/v1/audit/verify")
    if result["ok"]:
        typer.echo(
            f"audit chain of tenant {result['tenant_id']!r} verifies: "
            f"{result['events_checked']} events"
        )
        return
    typer.echo(
        f"audit chain of tenant {result['tenant_id']!r} is BROKEN at event seq "
        f"{result['first_bad_seq']} (row id {result['first_bad_id']}): {result['reason']}",
        err=True,
    )
    raise typer.Exit(1)


@app.command()
def events(
    run: Annotated[str | None, typer.Option(help="Only events of this run.")] = None,
    after: Annotated[int, typer.Option(help="Only events after this seq.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    output_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List audit events in chain order."""
    page = ApiClient().get("/v1/audit/events", run_id=run, after=after, limit=limit)
    if output_json:
        for event in page["items"]:
            typer.echo(json.dumps(event))
        return
    typer.echo(
        table(
            ["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "HASH"],
            [
                [
                    e["seq"],
                    ago(e["occurred_at"]),
                    e["actor"],
                    e["action"],
                    e["subject"],
                    e["outcome"],
                    e["hash"][:12],
                ]
                for e in page["items"]
            ],
        )
    )
    if page["next"]:
        typer.echo(f"\nMore: corral audit events --after {page['next']}")
