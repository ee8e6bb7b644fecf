"""CLI: ``corral rollout start|status|abort`` (canary rollouts with automatic rollback).

Each command names the permission its REST route needs (``Permission:`` in its help).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, table

__all__ = ["abort", "app", "start", "status"]

app = typer.Typer(help="Canary rollouts: a version takes a growing share of a stage's runs.")


@app.command()
def start(
    target: Annotated[str, typer.Argument(metavar="AGENT@VERSION", help="The candidate.")],
    stage: Annotated[str, typer.Option("--stage", help="Stage to roll out to.")],
    steps: Annotated[str, typer.Option("--steps", help="Percent steps.")] = "5,25,50,100",
    step_minutes: Annotated[int, typer.Option("--step-minutes", help="Per step.")] = 30,
    shadow: Annotated[bool, typer.Option("--shadow", help="Shadow step first.")] = False,
    min_canary_runs: Annotated[int, typer.Option("--min-canary-runs")] = 20,
    max_error_rate_increase: Annotated[float, typer.Option("--max-error-rate-increase")] = 0.05,
    max_latency_increase: Annotated[float, typer.Option("--max-latency-increase")] = 0.5,
    max_cost_increase: Annotated[float, typer.Option("--max-cost-increase")] = 0.5,
) -> None:
    """Start a canary rollout; workers advance it, roll it back on a breach, promote at 100.

    Example: corral rollout start repo-analyst@1.2.0 --stage production --steps 5,25,50,100
    """
    name, _, version = target.partition("@")
    try:
        shares = [int(step) for step in steps.split(",")]
    except ValueError:
        fail(f"--steps {steps!r} is not a list of percentages such as 5,25,50,100.", code=2)
    if not name or not version:
        fail(f"{target!r} names no version; write AGENT@VERSION.", code=2)
    body = {
        "version": version,
        "stage": stage,
        "steps_percent": shares,
        "step_minutes": step_minutes,
        "shadow": shadow,
        "min_canary_runs": min_canary_runs,
        "max_error_rate_increase": max_error_rate_increase,
        "max_latency_increase_ratio": max_latency_increase,
        "max_cost_increase_ratio": max_cost_increase,
    }
    result = ApiClient().post(f"/v1/agents/{name}/rollouts", body)
    typer.echo(
        f"rollout {result['id']}: {name} {result['baseline_version']} -> {version} in {stage}, "
        f"steps {','.join(map(str, result['steps']))} every {step_minutes} min"
    )


def _print(result: dict[str, Any]) -> None:
    rollout = result["rollout"]
    typer.echo(
        f"rollout {rollout['id']}: {rollout['agent_name']} {rollout['baseline_version']} -> "
        f"{rollout['candidate_version']} in {rollout['stage']}: {rollout['status']} at "
        f"{result['share_percent']}% (started {ago(rollout['started_at'])})"
        + (f"; {rollout['reason']}" if rollout["reason"] else "")
    )
    rows = [
        [name, m["runs"], m["finished"], m["error_rate"], m["median_cost_usd"],
         m["p95_latency_seconds"]]
        for name, m in result["metrics"].items()
    ]  # fmt: skip
    typer.echo(table(["VARIANT", "RUNS", "FINISHED", "ERROR", "MEDIAN $", "P95 S"], rows))
    if result["shadow_compared"]:
        typer.echo(
            f"shadow: {result['shadow_same']} of {result['shadow_compared']} answers "
            "the same as the live run"
        )
    for breach in result["breaches"]:
        typer.echo(f"breach: {breach}")


@app.command()
def status(agent: Annotated[str, typer.Argument(metavar="AGENT", help="The agent.")]) -> None:
    """Show the agent's latest rollout: share, per-variant metrics (shadow included), breaches."""
    _print(ApiClient().get(f"/v1/agents/{agent}/rollout"))


@app.command()
def abort(agent: Annotated[str, typer.Argument(metavar="AGENT", help="The agent.")]) -> None:
    """Abort the agent's active rollout: the stage keeps its version."""
    _print(ApiClient().post(f"/v1/agents/{agent}/rollout/abort", {}))
