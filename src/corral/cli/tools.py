"""CLI: ``corral tools import-openapi`` (registered on ``corral tools`` next to ``approve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral.cli._client import ApiClient, fail
from corral.contracts import read_yaml_file
from corral.errors import InvalidContract
from corral.gateway.tools import import_openapi as build_tools

__all__ = ["import_openapi"]


def _headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            fail(f"--header {value!r} is not 'Name: value'", code=2)
        headers[name.strip()] = rest.strip()
    return headers


def import_openapi(
    spec: Annotated[
        Path,
        typer.Argument(
            help="OpenAPI 3.0/3.1 document (YAML or JSON).", exists=True, dir_okay=False
        ),
    ],
    operations: Annotated[
        str | None,
        typer.Option(help="Comma-separated operationIds to import. Default: all of them."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="URL the paths are appended to. Default: the document's servers[0]."),
    ] = None,
    name_prefix: Annotated[
        str, typer.Option(help="Put before every tool name, e.g. 'petstore.'.")
    ] = "",
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Non-public host, address or network the tools may reach (SSRF allowlist); "
            "repeatable."
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            help="Header every call sends, 'Name: value'; values may reference secrets: "
            "'Authorization: Bearer ${secret:TOKEN}'. Repeatable."
        ),
    ] = None,
    timeout_seconds: Annotated[
        float | None, typer.Option(help="Timeout of each tool call, in seconds.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
) -> None:
    """Register operations of an OpenAPI document as http tools (one transaction).

    Example: corral tools import-openapi petstore.yaml --operations listPets,getPetById
    --name-prefix petstore.
    """
    try:
        tools = build_tools(
            read_yaml_file(spec),
            source=str(spec),
            operations=[o.strip() for o in operations.split(",") if o.strip()]
            if operations
            else None,
            base_url=base_url,
            name_prefix=name_prefix,
            allow_hosts=allow_host or [],
            headers=_headers(header or []),
            timeout_seconds=timeout_seconds,
        )
    except InvalidContract as exc:
        fail(exc.message, code=2)
    body = {
        "documents": [
            tool.model_dump(mode="json", by_alias=True, exclude_unset=True) for tool in tools
        ],
        "dry_run": dry_run,
    }
    for result in ApiClient().post("/v1/apply", body):
        name, action, version = result["name"], result["action"], result["version"]
        if action == "unchanged":
            typer.echo(f"tool/{name} unchanged ({version})")
            continue
        was = f" (was {result['previous_version']})" if result["previous_version"] else ""
        typer.echo(f"tool/{name} {'would be ' if dry_run else ''}{action}: {version}{was}")
        if dry_run and result["diff"]:
            typer.echo(result["diff"].rstrip())
