"""CLI: ``corral apply``, ``corral get``, ``corral describe``, ``corral schema``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml

from corral.cli._client import ApiClient, fail
from corral.cli._render import ago, render_step, table
from corral.contracts import KINDS, load_paths
from corral.errors import InvalidContract

__all__ = ["apply", "describe", "get", "schema"]


def apply(
    files: Annotated[
        list[Path],
        typer.Option("--file", "-f", help="YAML file or directory (recursive); repeatable."),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail (exit 2, nothing applied) on warnings, e.g. an agent allowing a tool "
            "that matches no registered tool.",
        ),
    ] = False,
) -> None:
    """Register Agent, Tool, Policy, Model, McpServer and EvalSuite documents (all, or none).

    One transaction. Unchanged documents are no-ops; a changed one becomes a new version. An
    agent allowing a tool name or wildcard that matches no registered tool (those applied with
    it count) is applied with a warning; --strict refuses it. `corral schema KIND` prints each
    kind's JSON Schema.

    Example: corral apply -f examples/agents/
    """
    try:
        documents = load_paths(files)
    except InvalidContract as exc:
        fail(exc.message, code=2)
    client = ApiClient()
    body = {
        "documents": [
            d.contract.model_dump(mode="json", by_alias=True, exclude_unset=True) for d in documents
        ],
        "dry_run": dry_run,
        "strict": strict,
    }
    for document, result in zip(documents, client.post("/v1/apply", body), strict=True):
        kind, name, action = result["kind"].lower(), result["name"], result["action"]
        if action == "unchanged":
            typer.echo(f"{kind}/{name} unchanged ({result['version']})")
        else:
            verb = "would be " if dry_run else ""
            was = f" (was {result['previous_version']})" if result["previous_version"] else ""
            typer.echo(f"{kind}/{name} {verb}{action}: {result['version']}{was}")
            if dry_run and result["diff"]:
                typer.echo(result["diff"].rstrip())
        for warning in result.get("warnings", []):
            typer.echo(f"warning: {document.source}: {kind}/{name}: {warning}", err=True)


class Resource(StrEnum):
    """What ``corral get`` lists."""

    agents = "agents"
    tools = "tools"
    runs = "runs"


class Output(StrEnum):
    """Output format."""

    table = "table"
    json = "json"
    yaml = "yaml"
    name = "name"


def _dump(value: object, output: str) -> str:
    """``value`` as indented JSON or as YAML (block style, keys in API order)."""
    if output == "yaml":
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip()
    return json.dumps(value, indent=2, ensure_ascii=False)


def get(
    resource: Annotated[Resource, typer.Argument(help="agents, tools or runs.")],
    limit: Annotated[int, typer.Option(help="Rows per page.", min=1, max=500)] = 50,
    after: Annotated[
        str | None, typer.Option(help="Page cursor printed under the previous page.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="Runs only: filter by status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Runs only: filter by agent.")] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, json, yaml or name.")
    ] = Output.table,
) -> None:
    """List agents, tools or runs (newest runs first), one page at a time."""
    client = ApiClient()
    if resource is Resource.runs:
        page = client.get("/v1/runs", limit=limit, before=after, status=status, agent=agent)
        key = "id"
        headers = ["RUN", "AGENT", "VERSION", "STATUS", "REASON", "STEPS", "CREATED"]
        rows = [
            [
                r["id"],
                r["agent_name"],
                r["agent_version"],
                r["status"],
                r["terminal_reason"] or "",
                r["step_count"],
                ago(r["created_at"]),
            ]
            for r in page["items"]
        ]
    elif resource is Resource.agents:
        page = client.get("/v1/agents", limit=limit, after=after)
        key = "name"
        headers = ["NAME", "VERSION", "STATUS", "UPDATED"]
        rows = [
            [a["name"], a["latest_version"], a["status"], ago(a["updated_at"])]
            for a in page["items"]
        ]
    else:
        page = client.get("/v1/tools", limit=limit, after=after)
        key = "name"
        headers = ["NAME", "VERSION", "TYPE", "SIDE EFFECT", "DESCRIPTION"]
        rows = [
            [
                t["name"],
                t["latest_version"],
                t["type"],
                t["side_effect"],
                t["description"].split(".")[0][:60],
            ]
            for t in page["items"]
        ]
    if output in (Output.json, Output.yaml):
        typer.echo(_dump(page, output.value))
    elif output is Output.name:
        for item in page["items"]:
            typer.echo(item[key])
    else:
        typer.echo(table(headers, rows) if rows else f"No {resource.value}.")
        if page["next"]:
            typer.echo(f"\nMore: corral get {resource.value} --after {page['next']}")


class DescribeOutput(StrEnum):
    """Output format of ``corral describe``."""

    table = "table"
    json = "json"
    yaml = "yaml"


class Describable(StrEnum):
    """What ``corral describe`` shows."""

    agent = "agent"
    run = "run"


def describe(
    kind: Annotated[Describable, typer.Argument(help="agent or run.")],
    name: Annotated[str, typer.Argument(help="Agent name or run id.")],
    output: Annotated[
        DescribeOutput,
        typer.Option("--output", "-o", help="table (for people), json or yaml (for tools)."),
    ] = DescribeOutput.table,
) -> None:
    """Show an agent (versions, digest, allowed tools, stages) or a run (state and every step).

    With -o json or yaml: the agent with its versions and stages, or the run with its steps.
    """
    client = ApiClient()
    if output is not DescribeOutput.table:
        typer.echo(_dump(_described(client, kind, name), output.value))
        return
    if kind is Describable.agent:
        agent = client.get(f"/v1/agents/{name}")
        versions = client.get(f"/v1/agents/{name}/versions")
        typer.echo(f"Agent:          {agent['name']}")
        typer.echo(f"Description:    {agent['description']}")
        typer.echo(f"Owner:          {agent['owner']}   Risk tier: {agent['risk_tier']}")
        typer.echo(f"Status:         {agent['status']}")
        typer.echo(f"Latest version: {agent['latest_version']}  {agent['digest']}")
        typer.echo(f"Allowed tools:  {', '.join(agent['allowed_tools']) or '(none)'}")
        typer.echo("Versions:")
        typer.echo(
            table(
                ["VERSION", "DIGEST", "CREATED"],
                [[v["version"], v["digest"], ago(v["created_at"])] for v in versions],
            )
        )
        stages = client.get(f"/v1/agents/{name}/stages")
        typer.echo("Stages:")
        typer.echo(
            table(
                ["STAGE", "VERSION", "BOUND BY", "BOUND"],
                [[s["stage"], s["version"], s["bound_by"], ago(s["bound_at"])] for s in stages],
            )
        )
        return
    run = client.get(f"/v1/runs/{name}")
    typer.echo(f"Run:      {run['id']}   trace {run['trace_id']}")
    typer.echo(f"Agent:    {run['agent_name']}@{run['agent_version']}  model {run['model']}")
    typer.echo(f"Status:   {run['status']}  {run['terminal_reason'] or ''}")
    typer.echo(
        f"Budget:   {run['iterations']} iterations, {run['tool_call_count']} tool calls, "
        f"{run['input_tokens']} in / {run['output_tokens']} out tokens, "
        f"{run.get('cost_usd', '0')} USD"
    )
    typer.echo(f"Task:     {run['task']}")
    for step in client.get(f"/v1/runs/{name}/steps"):
        typer.echo(render_step(step))
    if run["error"]:
        typer.echo(f"Error:    {run['error']}")
    if run.get("sources"):
        typer.echo(f"Sources:  {', '.join(run['sources'])}")
    if run["output"] is not None:
        typer.echo(f"Answer:\n{run['output']}")


def _described(client: ApiClient, kind: Describable, name: str) -> dict[str, object]:
    if kind is Describable.agent:
        return {
            **client.get(f"/v1/agents/{name}"),
            "versions": client.get(f"/v1/agents/{name}/versions"),
            "stages": client.get(f"/v1/agents/{name}/stages"),
        }
    return {**client.get(f"/v1/runs/{name}"), "steps": client.get(f"/v1/runs/{name}/steps")}


def schema(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(sorted(KINDS))}.")],
) -> None:
    """Print the JSON Schema of a contract kind (for editors and validation)."""
    model = KINDS.get(kind)
    if model is None:
        fail(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}", code=2)
    typer.echo(json.dumps(model.model_json_schema(by_alias=True), indent=2))
