"""CLI: ``corral feedback RUN --score ...`` (rate a run's answer, or list its ratings)."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._client import ApiClient

__all__ = ["feedback"]


def feedback(
    run_id: Annotated[str, typer.Argument(help="Run id (see `corral get runs`).")],
    score: Annotated[
        int | None,
        typer.Option(
            help="-1: a bad answer, 0: neutral, 1: a good answer. Omitted: list the run's "
            "feedback instead.",
            min=-1,
            max=1,
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="A short category, e.g. wrong_tool, hallucination.")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Free text (up to 4000 characters).")] = None,
) -> None:
    """Rate a run's answer; you are recorded as its author (and in the audit chain).

    Without --score, print the feedback the run has (oldest first).

    Example: corral feedback run_3f2a9c... --score -1 --label wrong_tool --comment "wrong file"
    """
    client = ApiClient()
    if score is not None:
        body = {"score": score, "label": label, "comment": comment}
        row = client.post(f"/v1/runs/{run_id}/feedback", body)
        typer.echo(f"feedback {row['id']} recorded on run {run_id} (score {row['score']:+d}).")
        return
    for row in client.get(f"/v1/runs/{run_id}/feedback"):
        typer.echo(
            f"{row['created_at']}  {row['score']:+d}  {row['label'] or '-'}  "
            f"{row['principal']}  {row['comment'] or ''}".rstrip()
        )
