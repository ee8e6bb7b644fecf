"""CLI: ``corral status``, the readiness checks of ``GET /readyz`` as a table (or JSON)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import table

__all__ = ["status"]


def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON answer as it is.")
    ] = False,
) -> None:
    """Show whether Corral is ready to serve: each readiness check, its status and the fix.

    Checks: the store answers and is migrated, the embedded model answers (where it runs),
    Redis (when configured), MCP upstreams' circuit breakers, free disk under CORRAL_HOME,
    the secrets master key. Exit code 1 when a check failed (HTTP 503 from /readyz).

    Example: corral status --json
    """
    body, ready = _readiness(ApiClient())
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        checks: dict[str, dict[str, str]] = body.get("checks", {})
        rows = [[name, check["status"], check["detail"]] for name, check in checks.items()]
        typer.echo(table(["CHECK", "STATUS", "DETAIL"], rows))
        failed = ", ".join(body.get("failed", []))
        typer.echo("ready" if ready else f"not ready: {failed} failed")
    if not ready:
        raise typer.Exit(1)


def _readiness(client: ApiClient) -> tuple[dict[str, Any], bool]:
    """``GET /readyz``: its JSON body and whether it answered 200 (503 is an answer too)."""
    import httpx  # imported by the commands that call the API, not by `corral worker`

    url = f"{client.base_url}/readyz"
    try:
        response = httpx.get(url, timeout=client.timeout_seconds)
    except httpx.ConnectError:
        fail(
            f"cannot reach Corral at {client.base_url}; start it with `corral up` "
            "(or set CORRAL_API__URL to where it runs)."
        )
    except httpx.TimeoutException:
        fail(f"Corral at {client.base_url} did not answer GET /readyz in time.")
    if response.status_code not in (200, 503):
        fail(f"GET /readyz answered HTTP {response.status_code}: {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body, response.status_code == 200
