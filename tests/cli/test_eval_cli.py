"""``corral eval run|show|list|compare|export`` against a real Corral server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

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
runner = CliRunner()


def model(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
    if not any(m.role == "tool" for m in request.messages):
        return [ScriptedModel.call("fs.list_dir", path=".")]
    return FinalAnswer("It prints 42.")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_server: CliServer) -> str:
    """A live API with a worker (SQLite); the CLI is pointed at it through CORRAL_API__URL."""
    settings = Settings(
        home=tmp_path / "home",
        runtime={"poll_interval_seconds": 0.02},
        workspaces={"roots": [tmp_path]},
    )
    app_ = create_app(
        Platform(settings, providers={"scripted": ScriptedModel(model)}), local_admin=True
    )
    monkeypatch.setattr("corral.cli.evals.POLL_SECONDS", 0.05)
    return cli_server(app_, home=settings.home)


SUITE_YAML = """\
apiVersion: corral.dev/v1
kind: EvalSuite
metadata:
  name: qa
spec:
  agent: repo-analyst
  graders: [{type: policy}]
  cases:
    - name: lists
      task: What is here?
      graders:
        - {type: trajectory, calls: [{tool: fs.list_dir}]}
        - {type: contains, values: ["42"]}
    - name: exact
      task: What does it print?
      graders: [{type: exact, expected: "It prints 42."}]
"""


def test_eval_run_prints_scores_compare_and_export(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tmp_path / "docs"
    files.mkdir()
    (files / "agent.yaml").write_text(AGENT_YAML)
    (files / "suite.yaml").write_text(SUITE_YAML)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "main.py").write_text("print(42)\n")
    applied = runner.invoke(app, ["apply", "-f", str(files)])
    assert "evalsuite/qa created: 0.1.0" in applied.output, applied.output

    # As on a terminal (CliRunner's is none): the bar is drawn only on a TTY (typer vendors click).
    monkeypatch.setattr("typer._click._termui_impl.isatty", lambda _file: True)
    first = runner.invoke(
        app, ["eval", "run", "qa", "--repeat", "2", "--workspace", str(workspace)]
    )
    assert first.exit_code == 0, first.output
    bar = first.output.split("\n")[0]  # redrawn in place: "\r" between the states
    assert re.search(r"^\reval \S+ +\[-*\] +0%\r", bar), bar  # before any case is graded
    assert re.search(r"\reval \S+ +\[#*\] +100%", bar), bar  # and full once all are
    lines = first.output.splitlines()
    assert any(line.split()[:3] == ["lists", "2/2", "2/2"] for line in lines), first.output
    assert "success rate 100% (4/4)" in first.output
    assert "PASSED: qa@0.1.0 on repo-analyst@0.1.0" in first.output

    changed = AGENT_YAML.replace("Answer using the fs tools.", "Answer briefly.")
    (files / "agent.yaml").write_text(changed)
    runner.invoke(app, ["apply", "-f", str(files)])
    second = runner.invoke(
        app, ["eval", "run", "qa", "--agent", "repo-analyst@0.1.1", "--workspace", str(workspace)]
    )
    assert second.exit_code == 0, second.output
    compared = runner.invoke(
        app, ["eval", "compare", "repo-analyst@0.1.0", "repo-analyst@0.1.1", "--suite", "qa"]
    )
    assert compared.exit_code == 0, compared.output
    assert "success rate +0 [+0, +0]" in compared.output and "REGRESSION" not in compared.output

    listed = runner.invoke(app, ["eval", "list", "--suite", "qa"])
    eval_id = listed.output.splitlines()[2].split()[0]  # the older eval, second newest first
    out = tmp_path / "eval.json"
    exported = runner.invoke(
        app, ["eval", "export", eval_id, "--format", "inspect", "-o", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert len(json.loads(out.read_text())["samples"]) == 4
    inspect_log = pytest.importorskip("inspect_ai.log")
    assert inspect_log.read_eval_log(str(out)).status == "success"
