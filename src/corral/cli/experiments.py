"""CLI: ``corral experiments start|status|stop`` (A/B experiments between agent versions).

Each command names the permission its REST route needs (``Permission:`` in its help).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table

__all__ = ["app", "start", "status", "stop"]

app = typer.Typer(help="A/B experiments: versions of an agent sharing a stage's runs.")


def _variant(text: str) -> dict[str, Any]:
    name, _, rest = text.partition("=")
    version, _, weight = rest.partition(":")
    try:
        return {"name": name, "version": version, "weight_percent": float(weight)}
    except ValueError:
        fail(f"{text!r} is not NAME=VERSION:PERCENT, e.g. control=1.0.0:50.", code=2)


@app.command()
def start(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Experiment name.")],
    agent: Annotated[str, typer.Option("--agent", help="The agent.")],
    variant: Annotated[
        list[str],
        typer.Option("--variant", help="NAME=VERSION:PERCENT (repeat; the first is the control)."),
    ],
    stage: Annotated[str, typer.Option("--stage", help="Stage whose new runs are split.")],
    key_by: Annotated[
        str,
        typer.Option(
            "--key-by",
            help="run, user or session (a run's --session id; a run without one: its run id).",
        ),
    ] = "run",
    metric: Annotated[str, typer.Option("--metric", help="success or error.")] = "success",
    min_samples: Annotated[int, typer.Option("--min-samples", help="Per variant.")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 0.05,
    max_hours: Annotated[float, typer.Option("--max-hours", help="Stop after.")] = 336,
) -> None:
    """Start an experiment (assignment: SHA-256 of experiment id + key, bucket 0..9999).

    Example: corral experiments start prompt-b --agent repo-analyst --stage production
    --variant control=1.0.0:50 --variant treatment=1.1.0:50 --key-by user
    """
    body = {
        "name": name,
        "agent": agent,
        "stage": stage,
        "variants": [_variant(v) for v in variant],
        "key_by": key_by,
        "metric": metric,
        "min_samples": min_samples,
        "alpha": alpha,
        "max_duration_hours": max_hours,
    }
    result = ApiClient().post("/v1/experiments", body)
    typer.echo(f"experiment {result['id']} started on {agent} in {stage}")


def _print_status(result: dict[str, Any]) -> None:
    experiment = result["experiment"]
    typer.echo(
        f"experiment {experiment['id']} ({experiment['name']}): {experiment['status']}, "
        f"agent {experiment['agent_name']} in {experiment['stage']}, metric "
        f"{experiment['metric']}, started {ago(experiment['started_at'])}"
    )
    rows = [
        [name, m["runs"], m["finished"], m["error_rate"], m["success_rate"],
         m["median_cost_usd"], m["p95_latency_seconds"]]
        for name, m in result["metrics"].items()
    ]  # fmt: skip
    headers = ["VARIANT", "RUNS", "FINISHED", "ERROR", "SUCCESS", "MEDIAN $", "P95 S"]
    typer.echo(table(headers, rows))
    for c in result["comparisons"]:
        typer.echo(f"{c['variant']} vs control: z={c['z']:.3f} p={c['p_value']:.4g}")
    typer.echo(f"stop rule: {result['reason']}; winner: {result['winner'] or '-'}")


@app.command()
def status(
    experiment_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="An experiment; none: list them.")
    ] = None,
) -> None:
    """Show an experiment's per-variant metrics and verdict, or list experiments."""
    client = ApiClient()
    if experiment_id:
        _print_status(client.get(f"/v1/experiments/{experiment_id}"))
        return
    rows = [
        [e["id"], e["name"], e["agent_name"], e["stage"], e["status"], e["winner"] or "-"]
        for e in client.get("/v1/experiments")
    ]
    typer.echo(table(["ID", "NAME", "AGENT", "STAGE", "STATUS", "WINNER"], rows))


@app.command()
def stop(
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="The experiment.")],
) -> None:
    """Stop an experiment: new runs get the stage's version again."""
    _print_status(ApiClient().post(f"/v1/experiments/{experiment_id}/stop", {}))
