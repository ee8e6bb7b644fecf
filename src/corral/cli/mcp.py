"""CLI: ``corral mcp sync SERVER``, ``corral mcp list`` and ``corral tools approve NAME@DIGEST``.

Register a server with an ``McpServer`` document (``corral apply -f``), then ``corral mcp sync``
imports its tools as pinned ``mcp`` tool versions. A later sync that finds a tool changed
quarantines it; ``corral tools approve`` approves the new digest after a review.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table

__all__ = ["app", "tools_app"]

app = typer.Typer(
    help="Upstream MCP servers and the tools imported from them.", no_args_is_help=True
)
tools_app = typer.Typer(help="Registered tools.", no_args_is_help=True)


def _sync_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"mcp-server/{result['server']} synced"]
    for name in result["added"]:
        lines.append(f"  added        {name}")
    for name in result["restored"]:
        lines.append(f"  restored     {name}")
    for item in result["quarantined"]:
        lines.append(
            f"  QUARANTINED  {item['name']}  approve: corral tools approve {item['approve']}"
        )
    for item in result["skipped"]:
        lines.append(f"  skipped      {item['tool']}: {item['reason']}")
    for name in result["removed"]:
        lines.append(f"  removed      {name} (no longer listed upstream)")
    lines.append(
        f"  {len(result['added'])} added, {len(result['unchanged'])} unchanged, "
        f"{len(result['quarantined'])} quarantined, {len(result['skipped'])} skipped"
    )
    return lines


@app.command()
def sync(server: Annotated[str, typer.Argument(help="The McpServer's name.")]) -> None:
    """List the server's tools now; record new ones and quarantine changed ones.

    Exit code 3 when a tool is quarantined (it needs `corral tools approve`).
    """
    result = ApiClient(timeout_seconds=300).post(f"/v1/mcp-servers/{server}/sync", {})
    typer.echo("\n".join(_sync_lines(result)))
    if result["quarantined"]:
        raise typer.Exit(3)


@app.command("list")
def list_(
    tools: Annotated[bool, typer.Option("--tools", help="List every imported tool.")] = False,
) -> None:
    """Registered MCP servers (and, with --tools, their imported tools and pins)."""
    servers = ApiClient().get("/v1/mcp-servers")
    if not servers:
        typer.echo("no MCP servers are registered; apply an McpServer document first")
        return
    if not tools:
        rows: list[tuple[Any, ...]] = [
            (
                s["name"],
                s["version"],
                s["transport"],
                len(s["tools"]),
                sum(t["status"] == "QUARANTINED" for t in s["tools"]),
                ago(s["updated_at"]),
            )
            for s in servers
        ]
        typer.echo(table(["NAME", "VERSION", "TRANSPORT", "TOOLS", "QUARANTINED", "UPDATED"], rows))
        return
    rows = [
        (t["name"], t["status"], t["digest"], t["approved_by"] or "-", ago(t["approved_at"]))
        for s in servers
        for t in s["tools"]
    ]
    typer.echo(table(["TOOL", "STATUS", "DIGEST", "APPROVED BY", "APPROVED"], rows))


@tools_app.command()
def approve(
    reference: Annotated[
        str, typer.Argument(metavar="NAME@DIGEST", help="e.g. git.git_commit@sha256:3f2a...")
    ],
) -> None:
    """Approve the digest a quarantined tool now has: it is offered and callable again."""
    name, at, digest = reference.rpartition("@")
    if not at or not name or not digest:
        fail(
            f"{reference!r} is not NAME@DIGEST; `corral mcp sync` and `corral mcp list --tools` "
            "show the digest to approve.",
            code=2,
        )
    pin = ApiClient().post(f"/v1/tools/{name}/approve", {"digest": digest})
    typer.echo(f"tool/{pin['name']} approved at {pin['approved_digest']} ({pin['status']})")
