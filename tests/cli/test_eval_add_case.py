"""``corral eval add-case SUITE_FILE --from-run RUN`` against a live server (both databases)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.cli._suite_file import Expect, SuiteFileError, append_case, case_from_run
from corral.contracts import EvalSuite, load_paths
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

runner = CliRunner()

AGENT_YAML = """\
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: Answers questions about a codebase.
  owner: platform-team
  instructions: Answer using the fs tools.
  model: {default: scripted/test}
  tools: {allowed: ["fs.*"]}
"""

SUITE_YAML = """\
# The team's regression suite: keep this comment.
apiVersion: corral.dev/v1
kind: EvalSuite
metadata:
  name: qa
spec:
  agent: repo-analyst
  graders: [{type: policy}]  # every case
  cases:
    - name: lists
      task: What is here?
      graders:
        - {type: trajectory, calls: [{tool: fs.list_dir}]}  # looked around
  # The gate is loose on purpose.
  thresholds:
    min_success_rate: 1.0
"""


def model(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
    if not any(m.role == "tool" for m in request.messages):
        return [ScriptedModel.call("fs.list_dir", path=".")]
    return FinalAnswer("It prints 42.")


def serve(cli_server: CliServer, settings: Settings, *, worker: bool) -> None:
    platform = Platform(settings, providers={"scripted": ScriptedModel(model)})
    cli_server(create_app(platform, run_worker=worker, local_admin=True), home=settings.home)


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The agent and suite files, and a workspace ``ws`` holding ``main.py``."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "agent.yaml").write_text(AGENT_YAML)
    (folder / "suite.yaml").write_text(SUITE_YAML)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "main.py").write_text("print(42)\n")
    return folder


def start_run(workspace: Path, *, follow: bool) -> str:
    code, out = cli("apply", "-f", str(workspace.parent / "docs" / "agent.yaml"))
    assert code == 0, out
    args = ["run", "repo-analyst", "What does it print?", "--workspace", str(workspace)]
    code, out = cli(*args, *(["--follow"] if follow else []))
    assert code == 0, out
    return out.split()[1]


def test_a_run_becomes_a_case_the_suite_runs(
    settings: Settings, cli_server: CliServer, files: Path, tmp_path: Path
) -> None:
    suite_file = files / "suite.yaml"
    serve(cli_server, settings, worker=True)
    run_id = start_run(tmp_path / "ws", follow=True)

    code, out = cli("eval", "add-case", str(suite_file), "--from-run", run_id, "--dry-run")
    assert code == 0, out
    assert "task: What does it print?" in out and "expected: It prints 42." in out
    assert f"# From run {run_id} of repo-analyst@0.1.0 (dev, SUCCEEDED)" in out
    assert suite_file.read_text() == SUITE_YAML  # a dry run writes nothing

    code, out = cli(
        "eval", "add-case", str(suite_file), "--from-run", run_id, "--name", "prints-42"
    )
    assert code == 0, out
    assert "added case 'prints-42'" in out
    text = suite_file.read_text()
    assert text.startswith(SUITE_YAML.split("  # The gate")[0])  # kept as written
    assert text.endswith("  # The gate is loose on purpose.\n  thresholds:\n"
                         "    min_success_rate: 1.0\n")  # fmt: skip
    suite = load_paths([suite_file])[0].contract
    assert isinstance(suite, EvalSuite)
    case = suite.spec.cases[-1]
    assert [c.name for c in suite.spec.cases] == ["lists", "prints-42"]
    assert case.task == "What does it print?" and case.expected == "It prints 42."
    assert case.workspace == str(tmp_path / "ws")
    assert [g.type for g in case.graders] == ["exact"]

    code, out = cli("apply", "-f", str(files))
    assert code == 0 and "evalsuite/qa created" in out, out
    code, out = cli("eval", "run", "qa", "--workspace", str(tmp_path / "ws"))
    assert code == 0, out
    assert any(line.split()[:2] == ["prints-42", "1/1"] for line in out.splitlines()), out

    code, out = cli(
        "eval", "add-case", str(suite_file), "--from-run", run_id, "--name", "prints-42"
    )
    assert code == 2 and "already has a case named 'prints-42'" in out, out
    assert suite_file.read_text() == text


def test_unfinished_and_other_tenants_runs_are_refused(
    settings: Settings, cli_server: CliServer, files: Path, tmp_path: Path
) -> None:
    suite_file = files / "suite.yaml"
    serve(cli_server, settings, worker=False)  # no worker: the run stays QUEUED
    run_id = start_run(tmp_path / "ws", follow=False)
    code, out = cli("eval", "add-case", str(suite_file), "--from-run", run_id)
    assert code == 1 and f"Run {run_id} is QUEUED, not finished" in out, out

    code, out = cli("tenants", "create", "team-red", "--name", "Team Red")
    assert code == 0, out
    code, out = cli(
        "eval", "add-case", str(suite_file), "--from-run", run_id,
        env={"CORRAL_TENANT": "team-red"},
    )  # fmt: skip
    assert code == 1 and "not found" in out.lower() and run_id in out, out
    code, out = cli("eval", "add-case", str(suite_file), "--from-run", "run_nope")
    assert code == 1 and "not found" in out.lower(), out
    assert suite_file.read_text() == SUITE_YAML


def test_a_file_that_is_not_a_suite_is_refused(tmp_path: Path) -> None:
    agent_file = tmp_path / "agent.yaml"
    agent_file.write_text(AGENT_YAML)
    code, out = cli("eval", "add-case", str(agent_file), "--from-run", "run_x")
    assert code == 2 and "kind is 'Agent', not 'EvalSuite'" in out, out
    assert agent_file.read_text() == AGENT_YAML


RUN = {
    "id": "run_ABC123",
    "task": "What does it print?",
    "workspace": None,
    "output": "  It prints 42.\n",
}


CASES_ONLY = SUITE_YAML.split("  # The gate")[0]


@pytest.mark.parametrize(
    ("text", "after"),
    [
        (CASES_ONLY, ""),
        (CASES_ONLY.rstrip("\n"), ""),  # no newline at the end of the file
        (CASES_ONLY + "\n# trailing words\n", "\n# trailing words\n"),
    ],
)
def test_cases_are_inserted_after_the_last_case(tmp_path: Path, text: str, after: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    suite = load_paths([path])[0].contract
    assert isinstance(suite, EvalSuite)
    case = case_from_run(RUN, suite, expect=Expect.contains)
    assert case.name == "run-abc123"
    inserted = append_case(path, case, comment="from a test")
    assert inserted.startswith("    # from a test\n    - name: run-abc123\n")
    assert path.read_text() == CASES_ONLY + inserted + after
    again = load_paths([path])[0].contract
    assert isinstance(again, EvalSuite)
    assert again.spec.cases[-1].graders[0].model_dump()["values"] == ["It prints 42."]


def test_flow_lists_and_missing_answers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    flow = SUITE_YAML.replace(
        "  cases:\n    - name: lists\n      task: What is here?\n      graders:\n"
        "        - {type: trajectory, calls: [{tool: fs.list_dir}]}  # looked around\n",
        "  cases: [{name: lists, task: What is here}]\n",
    )
    path.write_text(flow)
    suite = load_paths([path])[0].contract
    assert isinstance(suite, EvalSuite)
    with pytest.raises(SuiteFileError, match="not a block list"):
        append_case(path, case_from_run(RUN, suite, expect=Expect.none))
    assert path.read_text() == flow
    with pytest.raises(SuiteFileError, match="no final answer"):
        case_from_run({**RUN, "output": None}, suite)
