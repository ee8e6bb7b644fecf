"""CLI: ``corral secrets set|list|delete``: the tenant's secrets, through the REST API.

Each command names the permission its REST route needs (``Permission:`` in its help).

A value is read from stdin (or typed at a hidden prompt), never from the command line, where
shell history and ``ps`` would keep it. Nothing prints a value: the API never returns one.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table
from corral.cli.registry import Output

__all__ = ["app", "delete_secret", "list_secrets", "set_secret"]

app = typer.Typer(
    help="Secrets tools use at execution time (encrypted at rest; values never shown).",
    no_args_is_help=True,
)

_NAME = typer.Argument(metavar="NAME", help="Secret name, e.g. github-token.", show_default=False)


def _read_value(name: str) -> str:
    """The value from stdin (one trailing newline dropped), or a hidden prompt on a terminal."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value of secret {name!r} (input hidden): ")
    else:
        value = sys.stdin.read()
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        fail(
            f"no value for secret {name!r} on stdin; pipe it in, e.g. "
            f'`printf %s "$VALUE" | corral secrets set {name}` or '
            f"`corral secrets set {name} < value.txt` (values are never taken from arguments).",
            code=2,
        )
    return value


@app.command("set")
def set_secret(name: Annotated[str, _NAME]) -> None:
    """Set a secret from stdin; setting it again rotates it. Permission: secrets.write.

    The new value is used from the next tool call on. One trailing newline is dropped
    (echo adds one). Tools reference the secret as ${secret:NAME}.

    Example: printf %s "$GITHUB_TOKEN" | corral secrets set github-token
    """
    value = _read_value(name)
    result = ApiClient().request("PUT", f"/v1/secrets/{name}", json={"value": value})
    version = result["version"]
    done = "created" if version == 1 else f"rotated to version {version}"
    typer.echo(f"secret/{result['name']} {done}")


def _all_secrets(client: ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = client.get("/v1/secrets", limit=500, after=after)
        items += page["items"]
        after = page["next"]
        if not after:
            return items


@app.command("list")
def list_secrets(
    output: Annotated[Output, typer.Option("--output", "-o", help="table, json or name.")] = (
        Output.table
    ),
) -> None:
    """List the tenant's secrets: names, versions, who set them, when. Permission: secrets.read.

    Values are never shown: the API does not return them.
    """
    items = _all_secrets(ApiClient())
    if output is Output.json:
        typer.echo(json.dumps(items, indent=2))
        return
    if output is Output.name:
        for item in items:
            typer.echo(item["name"])
        return
    if not items:
        typer.echo('No secrets yet; set one with `printf %s "$VALUE" | corral secrets set NAME`.')
        return
    rows = [
        [s["name"], s["version"], s["updated_by"], ago(s["updated_at"]), ago(s["created_at"])]
        for s in items
    ]
    typer.echo(table(["NAME", "VERSION", "SET BY", "UPDATED", "CREATED"], rows))


@app.command("delete")
def delete_secret(name: Annotated[str, _NAME]) -> None:
    """Delete a secret; tools using it fail until it is set again. Permission: secrets.write."""
    result = ApiClient().request("DELETE", f"/v1/secrets/{name}")
    typer.echo(f"secret/{result['name']} deleted (it was at version {result['version']})")
