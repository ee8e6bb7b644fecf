"""CLI: ``corral prompts list|describe|diff`` (apply Prompt documents with ``corral apply``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient
from corral.cli._render import ago, table

__all__ = ["app"]

app = typer.Typer(
    help="Versioned prompts, referenced by agents as instructions_ref: prompts/NAME@VERSION.",
    no_args_is_help=True,
)


@app.command("list")
def list_() -> None:
    """The tenant's prompts with their latest version and its digest."""
    client = ApiClient()
    rows: list[tuple[Any, ...]] = []
    after: str | None = None
    while True:
        page = client.get("/v1/prompts", after=after)
        rows += [
            (
                p["name"],
                p["latest_version"],
                p["digest"][:19],
                ago(p["updated_at"]),
                p["description"],
            )
            for p in page["items"]
        ]
        after = page["next"]
        if after is None:
            break
    typer.echo(table(["NAME", "LATEST", "DIGEST", "UPDATED", "DESCRIPTION"], rows))


def _split(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.removeprefix("prompts/").partition("@")
    return name, version or None


@app.command()
def describe(
    prompt: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: the latest).")],
) -> None:
    """A prompt's history (every version, digest, date) and the content of one version.

    Example: corral prompts describe support-triage@1.2.0
    """
    name, version = _split(prompt)
    versions = ApiClient().get(f"/v1/prompts/{name}/versions")
    shown = next((v for v in versions if v["version"] == version), versions[0])
    if version is not None and shown["version"] != version:
        known = ", ".join(v["version"] for v in versions)
        typer.echo(f"Prompt {name!r} has no version {version!r}; versions: {known}.", err=True)
        raise typer.Exit(1)
    rows = [(v["version"], v["digest"], ago(v["created_at"])) for v in versions]
    typer.echo(f"prompt/{name}  (reference it as prompts/{name}@{shown['version']})")
    typer.echo(table(["VERSION", "DIGEST", "CREATED"], rows))
    typer.echo(f"\n--- content of {name}@{shown['version']} ---\n{shown['content']}")


@app.command()
def diff(
    prompt: Annotated[str, typer.Argument(help="Prompt name.")],
    old: Annotated[str, typer.Argument(help="The older version.")],
    new: Annotated[str | None, typer.Argument(help="The newer version (default: latest).")] = None,
) -> None:
    """Unified diff of the content of two versions of a prompt (nothing: identical).

    Example: corral prompts diff support-triage 1.0.0 1.1.0
    """
    params = {"from": old} if new is None else {"from": old, "to": new}
    typer.echo(ApiClient().get(f"/v1/prompts/{prompt}/diff", **params)["diff"], nl=False)
