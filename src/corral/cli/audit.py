"""CLI: ``corral audit verify``, ``corral audit events`` and ``corral audit export``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table

__all__ = ["app"]

app = typer.Typer(help="Read and verify the audit chain.", no_args_is_help=True)


_TENANT_HELP = "Which chain: your tenant (the default) or '*' for the platform chain."


@app.command()
def verify(
    tenant: Annotated[str | None, typer.Option(help=_TENANT_HELP)] = None,
) -> None:
    """Recompute the audit hash chain; exit 1 naming the first bad event if it is broken."""
    result = ApiClient(timeout_seconds=600).get("/v1/audit/verify", tenant=tenant)
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
    tenant: Annotated[str | None, typer.Option(help=_TENANT_HELP)] = None,
) -> None:
    """List audit events in chain order."""
    page = ApiClient().get("/v1/audit/events", run_id=run, after=after, limit=limit, tenant=tenant)
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


class ExportFormat(StrEnum):
    """Output format of ``corral audit export``."""

    jsonl = "jsonl"


_EXPORT_PAGE = 1000


def _instant(text: str, option: str) -> str:
    """``text`` as an ISO 8601 time with its offset (UTC when it has none); exit 2 if invalid."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-05-01T00:00:00Z.", code=2)
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


@app.command()
def export(
    since: Annotated[
        str,
        typer.Option(help="ISO 8601 time: events that occurred at or after it (UTC if no offset)."),
    ],
    until: Annotated[
        str | None, typer.Option(help="ISO 8601 time: only events that occurred before it.")
    ] = None,
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl: one JSON object per line.")
    ] = ExportFormat.jsonl,
    tenant: Annotated[str | None, typer.Option(help=_TENANT_HELP)] = None,
) -> None:
    """Print every audit event in a time range, in chain order, for SIEM ingestion.

    Each line is one event: seq, occurred_at, tenant_id, actor, action, subject, outcome,
    run_id, trace_id, policy_decision_id, details, prev_hash and hash (``corral audit verify``
    recomputes the hashes). Pages through the API; redirect the output to a file.

    Example: corral audit export --since 2026-05-01T00:00:00Z > audit.jsonl
    """
    client = ApiClient(timeout_seconds=120)
    params = {
        "since": _instant(since, "--since"),
        "until": None if until is None else _instant(until, "--until"),
        "tenant": tenant,
        "limit": _EXPORT_PAGE,
    }
    after = 0
    while True:
        page = client.get("/v1/audit/events", after=after, **params)
        for event in page["items"]:
            if output_format is ExportFormat.jsonl:
                typer.echo(json.dumps(event, ensure_ascii=False, sort_keys=True))
        if page["next"] is None:
            return
        after = int(page["next"])
