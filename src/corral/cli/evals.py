"""CLI: ``corral eval run|show|list|compare|export|add-case`` (eval suites on agent versions)."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli._client import ApiClient, fail
from corral.cli._render import table
from corral.cli._suite_file import (
    Expect,
    SuiteFileError,
    append_case,
    case_from_run,
    read_suite,
    render_case,
)

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Run eval suites on agent versions and compare them.")

POLL_SECONDS = 1.0
"""How often ``corral eval run`` grades and redraws its progress."""


class ExportFormat(StrEnum):
    """Formats ``corral eval export`` writes."""

    inspect = "inspect"


def _target(value: str) -> tuple[str, str | None]:
    name, _, version = value.partition("@")
    if not name:
        fail(f"{value!r} names no agent; write AGENT or AGENT@VERSION.", code=2)
    return name, version or None


def _money(value: Any) -> str:
    return "-" if value is None else f"${value}"


def score_table(result: dict[str, Any]) -> str:
    """Per case: runs passed, and per grader how many runs it passed; then the summary."""
    graders: list[str] = []
    rows: dict[str, dict[str, list[int]]] = {}
    for case in result["cases"]:
        per = rows.setdefault(case["case"], {"PASS": [0, 0]})
        per["PASS"][0] += bool(case["passed"])
        per["PASS"][1] += 1
        for grader in case["graders"]:
            if grader["name"] not in graders:
                graders.append(grader["name"])
            tally = per.setdefault(grader["name"], [0, 0])
            tally[0] += grader["passed"]
            tally[1] += 1
    columns = ["PASS", *graders]
    body = [
        [name, *(f"{per[c][0]}/{per[c][1]}" if c in per else "-" for c in columns)]
        for name, per in rows.items()
    ]
    text = table(["CASE", *columns], body)
    summary = result.get("summary")
    if summary:
        latency = summary["p95_latency_seconds"]
        text += (
            f"\n\nsuccess rate {summary['success_rate']:.0%} "
            f"({summary['passed_runs']}/{summary['case_runs']})  "
            f"policy violations {summary['policy_violations']}  "
            f"median cost {_money(summary['median_cost_usd'])}  "
            f"p95 latency {'-' if latency is None else f'{latency:.1f}s'}  "
            f"judge cost {_money(summary['judge_cost_usd'])}\n"
            + _errored_note(summary.get("errored_runs", 0))
            + f"{'PASSED' if result['passed'] else 'FAILED'}: {result['suite']}@"
            f"{result['suite_version']} on {result['agent']}@{result['agent_version']} "
            f"({result['agent_digest'][:19]})  eval {result['id']}"
        )
    return text


def _errored_note(errored: int) -> str:
    """A line saying the eval is inconclusive when case runs errored (empty when none)."""
    if not errored:
        return ""
    return (
        f"{errored} case run(s) ended in a model provider or platform error (model_error, "
        "internal_error): inconclusive, not passed; see `corral get runs --status FAILED`, "
        "fix the cause and run the eval again\n"
    )


@app.command("run")
def run(
    suite: Annotated[str, typer.Argument(metavar="SUITE", help="Eval suite name.")],
    agent: Annotated[
        str | None,
        typer.Option("--agent", metavar="AGENT[@VERSION]", help="Default: the suite's agent."),
    ] = None,
    repeat: Annotated[int, typer.Option(help="Runs per case.", min=1, max=20)] = 1,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Directory for cases naming none (resolved to an absolute path)."),
    ] = None,
    timeout_seconds: Annotated[
        float, typer.Option(help="Give up waiting after this many seconds.", min=1)
    ] = 3600,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Run an eval suite on an agent version, show progress, then the score table.

    Example: corral eval run repo-analyst --agent repo-analyst@0.1.0 --repeat 3
    """
    name, version = _target(agent) if agent else (None, None)
    client = ApiClient()
    body = {
        "suite": suite,
        "agent": name,
        "version": version,
        "repeat": repeat,
        "workspace": None if workspace is None else str(workspace.expanduser().resolve()),
    }
    result = client.post("/v1/evals", body)
    deadline = time.monotonic() + timeout_seconds
    with typer.progressbar(length=len(result["cases"]), label=f"eval {result['id']}") as bar:
        done = 0
        while True:
            result = client.post(f"/v1/evals/{result['id']}/grade", {})
            graded = sum(1 for c in result["cases"] if c["status"] == "graded")
            bar.update(graded - done)
            done = graded
            if result["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
    if output == "json":
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(score_table(result))
    if result["status"] != "completed":
        fail(f"Eval {result['id']} is still running; see `corral eval show {result['id']}`.")


@app.command("show")
def show(
    eval_id: Annotated[str, typer.Argument(metavar="EVAL", help="Eval id.")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Show an eval's score table (or its results per case and grader as JSON)."""
    result = ApiClient().get(f"/v1/evals/{eval_id}")
    typer.echo(json.dumps(result, indent=2) if output == "json" else score_table(result))


@app.command("list")
def list_(
    agent: Annotated[str | None, typer.Option(help="Only evals of this agent.")] = None,
    suite: Annotated[str | None, typer.Option(help="Only evals of this suite.")] = None,
) -> None:
    """List evals, newest first."""
    params = {k: v for k, v in {"agent": agent, "suite": suite}.items() if v is not None}
    rows = ApiClient().get("/v1/evals", **params)
    typer.echo(
        table(
            ["ID", "SUITE", "AGENT", "STATUS", "PASSED", "SUCCESS"],
            [
                [
                    r["id"],
                    f"{r['suite']}@{r['suite_version']}",
                    f"{r['agent']}@{r['agent_version']}",
                    r["status"],
                    "-" if r["passed"] is None else ("yes" if r["passed"] else "no"),
                    "-" if not r["summary"] else f"{r['summary']['success_rate']:.0%}",
                ]
                for r in rows
            ],
        )
    )


def _interval(value: dict[str, Any] | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value['delta']:+.4g}{unit} [{value['low']:+.4g}, {value['high']:+.4g}]"


@app.command("compare")
def compare(
    baseline: Annotated[str, typer.Argument(metavar="AGENT@V1", help="The baseline version.")],
    candidate: Annotated[str, typer.Argument(metavar="AGENT@V2", help="The candidate version.")],
    suite: Annotated[str, typer.Option("--suite", help="Eval suite both ran.")],
) -> None:
    """Compare two versions' latest evals on a suite: regressions and deltas (95% CI).

    Example: corral eval compare repo-analyst@0.1.0 repo-analyst@0.1.1 --suite repo-analyst
    """
    agent, a = _target(baseline)
    other, b = _target(candidate)
    if other != agent or a is None or b is None:
        fail("Compare two versions of one agent: AGENT@V1 AGENT@V2.", code=2)
    result = ApiClient().get("/v1/evals/compare", agent=agent, a=a, b=b, suite=suite)
    rows = [
        [
            c["case"],
            "-" if c["a_pass_rate"] is None else f"{c['a_pass_rate']:.0%}",
            "-" if c["b_pass_rate"] is None else f"{c['b_pass_rate']:.0%}",
            "REGRESSION" if c["regression"] else "",
        ]
        for c in result["cases"]
    ]
    typer.echo(table(["CASE", a, b, ""], rows))
    typer.echo(
        f"\nsuccess rate {_interval(result['success_rate'])}  "
        f"median cost {_interval(result['median_cost_usd'], ' USD')}  "
        f"p95 latency {_interval(result['p95_latency_seconds'], 's')}  "
        f"(b - a, 95% bootstrap CI)"
    )


@app.command("export")
def export(
    eval_id: Annotated[str, typer.Argument(metavar="RESULT", help="Eval id.")],
    output_file: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    format_: Annotated[ExportFormat, typer.Option("--format", help="inspect.")] = (
        ExportFormat.inspect
    ),
) -> None:
    """Export an eval in Inspect's eval log format (`inspect view` opens it)."""
    log = ApiClient().get(f"/v1/evals/{eval_id}/inspect")
    output_file.write_text(json.dumps(log, indent=2))
    typer.echo(f"wrote {output_file} ({format_.value} eval log, {len(log['samples'])} samples)")


@app.command("add-case")
def add_case(
    suite_file: Annotated[
        Path, typer.Argument(metavar="SUITE_FILE", help="EvalSuite YAML file to append to.")
    ],
    from_run: Annotated[
        str, typer.Option("--from-run", metavar="RUN", help="Id of the run to turn into a case.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Case name; default: from the run id (run-3f2a...).")
    ] = None,
    expect: Annotated[
        Expect,
        typer.Option(
            help="final: an exact grader on the run's answer; contains: the answer must "
            "contain it; none: only the suite's graders (a policy grader if it has none)."
        ),
    ] = Expect.final,
    allow_failed: Annotated[
        bool, typer.Option("--allow-failed", help="Accept a run that finished without succeeding.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the case; write nothing.")
    ] = False,
) -> None:
    """Turn a finished run into a regression case at the end of a suite file's cases.

    The case gets the run's task and workspace, and expects its final answer (see --expect);
    a comment above it names the run, agent and version. Only SUCCEEDED runs of your
    tenant, unless --allow-failed. The rest of the file is kept as written; the file must
    still parse as the suite plus the case, else nothing is written. Apply the file and
    `corral eval run` the suite to use the case.

    Example: corral eval add-case examples/evals/repo-analyst.yaml --from-run run_3f2a...
    """
    try:
        _, suite = read_suite(suite_file)
    except SuiteFileError as exc:
        fail(str(exc), code=2)
    run = ApiClient().get(f"/v1/runs/{from_run}")
    if run.get("finished_at") is None:
        fail(f"Run {run['id']} is {run['status']}, not finished; add it once it has ended.")
    if run["status"] != "SUCCEEDED" and not allow_failed:
        fail(
            f"Run {run['id']} ended {run['status']}, not SUCCEEDED; pass --allow-failed "
            "(with --expect none if it has no answer) to keep it as a case anyway."
        )
    comment = (
        f"From run {run['id']} of {run['agent_name']}@{run['agent_version']} "
        f"({run['stage']}, {run['status']}), by corral eval add-case."
    )
    try:
        case = case_from_run(run, suite, name=name, expect=expect)
        if dry_run:
            typer.echo(render_case(case, comment=comment), nl=False)
            return
        append_case(suite_file, case, comment=comment)
    except SuiteFileError as exc:
        fail(str(exc), code=2)
    typer.echo(f"added case {case.name!r} to {suite_file} (suite {suite.metadata.name!r})")
