"""CLI: ``corral models list``, ``corral models describe ALIAS`` and ``corral models test ALIAS``.

Aliases come from the tenant's ``Model`` documents (``corral apply -f``) and, for names the
tenant does not define, the platform's default set.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient
from corral.cli._render import table

__all__ = ["app"]

app = typer.Typer(help="Model aliases and their deployments.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """The model aliases this tenant can use, with where each comes from."""
    client = ApiClient()
    rows: list[tuple[Any, ...]] = []
    after: str | None = None
    while True:
        page = client.get("/v1/model-aliases", after=after)
        for alias in page["items"]:
            deployments = alias["deployments"]
            regions = sorted({d["region"] for d in deployments if d["region"]})
            rows.append(
                (
                    alias["name"],
                    alias["source"],
                    len(deployments),
                    ", ".join(f"{d['provider']}/{d['model']}" for d in deployments[:3]),
                    ", ".join(regions) or "-",
                )
            )
        after = page["next"]
        if after is None:
            break
    typer.echo(table(["ALIAS", "SOURCE", "DEPLOYMENTS", "MODELS", "REGIONS"], rows))


def _describe_lines(alias: dict[str, Any]) -> list[str]:
    lines = [
        f"model-alias/{alias['name']}  ({alias['source']})",
        f"  {alias['description']}",
    ]
    rows = [
        (
            d["name"],
            f"{d['provider']}/{d['model']}",
            d["region"] or "-",
            d["weight"],
            d["max_retries"],
            d["breaker"],
            d["base_url"] or "-",
            d["api_key"] or "-",
        )
        for d in alias["deployments"]
    ]
    headers = ["DEPLOYMENT", "MODEL", "REGION", "WEIGHT", "RETRIES", "BREAKER", "BASE_URL", "KEY"]
    lines += ["  " + line for line in table(headers, rows).splitlines()]
    return lines


@app.command()
def describe(alias: Annotated[str, typer.Argument(help="The alias (e.g. default).")]) -> None:
    """An alias's deployments in order: region, weight, retries, breaker state, endpoint."""
    typer.echo("\n".join(_describe_lines(ApiClient().get(f"/v1/model-aliases/{alias}"))))


def _test_lines(result: dict[str, Any]) -> list[str]:
    cost = result["cost_usd"]
    lines = [
        f"model-alias/{result['alias']} answered by {result['deployment']} "
        f"({result['model']}, region {result['region'] or '-'})",
        f"  latency  {result['latency_ms']:.1f} ms",
        f"  tokens   {result['input_tokens']} in, {result['output_tokens']} out",
        f"  cost     {'-' if cost is None else f'${cost} USD'}",
        f"  answer   {result['answer'][:200]!r}",
    ]
    for attempt in result["attempts"]:
        lines.append(f"  failover {attempt['deployment']} {attempt['outcome']}: {attempt['error']}")
    return lines


@app.command()
def test(alias: Annotated[str, typer.Argument(help="The alias (or provider/model).")]) -> None:
    """Make one small call to the alias: which deployment answered, latency, tokens, cost."""
    result = ApiClient(timeout_seconds=300).post(f"/v1/model-aliases/{alias}/test", {})
    typer.echo("\n".join(_test_lines(result)))
