"""CLI: ``corral runs replay RUN [--agent A@V]`` (registered on ``corral runs``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient

__all__ = ["replay"]


def replay(
    run_id: Annotated[str, typer.Argument(help="A finished run (see `corral get runs`).")],
    agent: Annotated[
        str | None,
        typer.Option(
            help="AGENT or AGENT@VERSION to run instead (what would it have done?). Omitted: "
            "an exact replay of the recorded run."
        ),
    ] = None,
) -> None:
    """Re-run a recorded run as a new run, never repeating a side effect.

    Exact (no --agent): the recorded model outputs and tool results are served back, so the
    replay makes the same tool calls and gives the same answer. With --agent: that version
    decides, calls matching a recorded one get its recorded result, and a side-effecting call
    with no recorded result is denied. Follow the new run with `corral describe run ID`.

    Example: corral runs replay run_3f2a9c... --agent repo-analyst@1.3.0
    """
    body: dict[str, Any] = {}
    if agent is not None:
        name, _, version = agent.partition("@")
        body = {"agent": name, "version": version or None}
    run = ApiClient().post(f"/v1/runs/{run_id}/replay", body)
    mode = "what-if" if agent else "exact"
    typer.echo(
        f"run {run['id']} replays {run_id} ({mode}, {run['agent_name']}@{run['agent_version']})"
    )
