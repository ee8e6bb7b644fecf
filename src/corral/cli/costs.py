"""CLI: ``corral costs``, what model calls cost, grouped by agent, model, tenant or day."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import table

__all__ = ["costs", "parse_since"]

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class CostGrouping(enum.StrEnum):
    """How a cost report is grouped."""

    agent = "agent"
    model = "model"
    tenant = "tenant"
    day = "day"


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (ago) or an ISO 8601 time -> an aware UTC time.

    Raises:
        typer.BadParameter: neither form.
    """
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (7d, 24h, 30m, 2w) nor an ISO 8601 time "
            "(2026-05-01 or 2026-05-01T12:00:00Z)."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def costs(
    by: Annotated[
        CostGrouping, typer.Option("--by", help="Group by agent, model, tenant or day (UTC).")
    ] = CostGrouping.agent,
    since: Annotated[
        str,
        typer.Option(help="From this long ago (7d, 24h, 30m, 2w) or an ISO 8601 time."),
    ] = "7d",
) -> None:
    """What model calls cost (US dollars) and their tokens, grouped. Permission: runs.read.

    Platform admins with --by tenant see every tenant; everyone else, their own tenant.

    Example: corral costs --by agent --since 7d
    """
    try:
        start = parse_since(since)
    except typer.BadParameter as exc:
        fail(str(exc), code=2)
    report = ApiClient().get("/v1/costs", by=by.value, since=start.isoformat())
    rows = [
        [
            g["key"],
            g["calls"],
            g["input_tokens"],
            g["output_tokens"],
            g["cache_read_tokens"],
            g["cost_usd"],
            g["unpriced_calls"] or "",
        ]
        for g in report["groups"]
    ]
    headers = [by.value.upper(), "CALLS", "IN TOKENS", "OUT TOKENS", "CACHED", "COST USD"]
    typer.echo(table([*headers, "UNPRICED"], rows))
    typer.echo(f"total: {report['total_cost_usd']} USD since {report['since']}")
