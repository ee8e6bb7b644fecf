"""The ``corral`` command line. Commands talk to the REST API, except those that run servers."""

from __future__ import annotations

import sys
from typing import Any

import pydantic
import typer

from corral import __version__
from corral.cli import (
    approvals,
    audit,
    control,
    costs,
    evals,
    experiments,
    feedback,
    identity,
    mcp,
    models,
    policy,
    prompts,
    registry,
    releases,
    replay,
    rollouts,
    runs,
    secrets,
    server,
    status,
    tools,
)
from corral.cli._help import readable_placeholders
from corral.cli._permissions import declare_permissions
from corral.errors import CorralError, InvalidContract, InvalidRequest

__all__ = ["app", "command", "main"]

app = typer.Typer(
    name="corral",
    help="Corral: build, run, govern and observe LLM agents.\n\n"
    "Start with `corral up`, then `corral apply -f examples/agents/` and "
    '`corral run repo-analyst "What does this code do?" --workspace . --follow`.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command(rich_help_panel="Serve")(server.up)
app.command(rich_help_panel="Serve")(server.worker)
app.add_typer(server.db_app, name="db", rich_help_panel="Serve")
app.command(rich_help_panel="Serve")(status.status)
app.command(rich_help_panel="Registry")(registry.apply)
app.command(rich_help_panel="Registry")(registry.get)
app.command(rich_help_panel="Registry")(registry.describe)
app.command(rich_help_panel="Registry")(registry.schema)
app.command(rich_help_panel="Release")(releases.promote)
app.command(rich_help_panel="Release")(releases.rollback)
app.command(rich_help_panel="Release")(releases.promotions)
app.add_typer(rollouts.app, name="rollout", rich_help_panel="Release")
app.add_typer(experiments.app, name="experiments", rich_help_panel="Release")
app.command(rich_help_panel="Runs")(runs.run)
app.command(rich_help_panel="Runs")(runs.trace)
app.command(rich_help_panel="Runs")(control.cancel)
control.runs_app.command("replay")(replay.replay)
app.add_typer(control.runs_app, name="runs", rich_help_panel="Runs")
app.add_typer(control.kill_switch_app, name="kill-switch", rich_help_panel="Govern")
app.command(rich_help_panel="Govern")(approvals.approvals)
app.command(rich_help_panel="Govern")(approvals.approve)
app.command(rich_help_panel="Govern")(approvals.reject)
app.add_typer(policy.app, name="policy", rich_help_panel="Govern")
app.add_typer(secrets.app, name="secrets", rich_help_panel="Govern")
app.add_typer(mcp.app, name="mcp", rich_help_panel="Registry")
app.add_typer(models.app, name="models", rich_help_panel="Registry")
app.add_typer(prompts.app, name="prompts", rich_help_panel="Registry")
mcp.tools_app.command("import-openapi")(tools.import_openapi)
app.add_typer(mcp.tools_app, name="tools", rich_help_panel="Registry")
app.add_typer(audit.app, name="audit", rich_help_panel="Evidence")
app.add_typer(evals.app, name="eval", rich_help_panel="Evidence")
app.command(rich_help_panel="Evidence")(costs.costs)
app.command(rich_help_panel="Evidence")(feedback.feedback)
app.command(rich_help_panel="Identity")(identity.whoami)
app.add_typer(identity.tenants_app, name="tenants", rich_help_panel="Identity")
app.add_typer(identity.users_app, name="users", rich_help_panel="Identity")
app.add_typer(identity.keys_app, name="keys", rich_help_panel="Identity")
app.add_typer(identity.roles_app, name="roles", rich_help_panel="Identity")
app.add_typer(identity.quotas_app, name="quotas", rich_help_panel="Identity")


@app.command(rich_help_panel="Serve")
def version() -> None:
    """Print Corral's version."""
    typer.echo(__version__)


declare_permissions(app)


def command() -> Any:
    """The ``corral`` click command: ``app`` with readable help placeholders."""
    return readable_placeholders(typer.main.get_command(app))


def main() -> None:
    """Entry point of the ``corral`` console script.

    Expected errors (Corral's own, a bad setting) print one line, ``error: ...``, and exit 2
    for invalid input, 1 otherwise; only a bug prints a traceback.
    """
    try:
        command().main(prog_name="corral")
    except CorralError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2 if isinstance(exc, InvalidRequest | InvalidContract) else 1)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: invalid configuration (CORRAL_* settings): {problems}", err=True)
        sys.exit(2)
