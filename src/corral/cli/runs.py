"""CLI: ``corral run`` and ``corral trace``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient
from corral.cli._render import render_step, render_trace

__all__ = ["run", "trace"]

_TERMINAL = {
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "REJECTED",
    "TIMED_OUT",
    "BUDGET_EXCEEDED",
    "KILLED",
}


def run(
    agent: Annotated[str, typer.Argument(help="Registered agent name.")],
    task: Annotated[str, typer.Argument(help="What the agent should do, in words.")],
    workspace: Annotated[
        Path | None,
        typer.Option(
            help="Directory the fs.* tools may read (on the server's machine).",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Print each step as it happens.")
    ] = False,
    version: Annotated[str | None, typer.Option(help="Agent version (default: latest).")] = None,
    model: Annotated[str | None, typer.Option(help="provider/model the agent allows.")] = None,
    timeout: Annotated[
        float, typer.Option(help="With --follow: give up waiting after this many seconds.")
    ] = 900.0,
) -> None:
    """Start a run of AGENT on TASK and print its id (with --follow: its steps and answer).

    Example: corral run repo-analyst "What does this package do?" --workspace . --follow
    """
    client = ApiClient()
    body: dict[str, Any] = {
        "task": task,
        "workspace": str(workspace) if workspace else None,
        "version": version,
        "model": model,
    }
    created = client.post(f"/v1/agents/{agent}/runs", body)
    run_id = created["id"]
    typer.echo(
        f"run {run_id} created ({created['agent_name']}@{created['agent_version']}, "
        f"model {created['model']})"
    )
    if not follow:
        typer.echo(f"Follow it with: corral describe run {run_id}")
        return
    final = _follow(client, run_id, timeout)
    typer.echo("")
    typer.echo(
        f"Run {run_id} {final['status']} ({final['terminal_reason']}): "
        f"{final['step_count']} steps, {final['tool_call_count']} tool calls, "
        f"{final['input_tokens']} in / {final['output_tokens']} out tokens"
    )
    if final["error"]:
        typer.echo(f"Error: {final['error']}")
    if final["output"] is not None:
        typer.echo(f"Answer:\n{final['output']}")
    typer.echo(f"Trace: corral trace {run_id}")
    if final["status"] != "SUCCEEDED":
        raise typer.Exit(1)


def _follow(client: ApiClient, run_id: str, timeout: float) -> dict[str, Any]:
    seen = -1
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/v1/runs/{run_id}")
        for step in client.get(f"/v1/runs/{run_id}/steps", after=seen):
            typer.echo(render_step(step))
            seen = step["index"]
        if state["status"] in _TERMINAL:
            return dict(state)
        if time.monotonic() > deadline:
            typer.echo(f"Still {state['status']} after {timeout:.0f} s; stopped following.")
            raise typer.Exit(1)
        time.sleep(0.25)


def trace(
    run_id: Annotated[str, typer.Argument(help="Run id (see `corral get runs`).")],
    output_json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON.")] = False,
) -> None:
    """Print a run's span tree (invoke_agent > chat / execute_tool) with durations and tokens."""
    spans = ApiClient().get(f"/v1/runs/{run_id}/spans")
    if output_json:
        typer.echo(json.dumps(spans, indent=2))
    elif not spans:
        typer.echo(f"No spans stored for run {run_id} yet.")
    else:
        typer.echo(render_trace(spans))
