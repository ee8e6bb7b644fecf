"""``corral prompts``, ``corral feedback`` and ``corral runs replay`` against a live server."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

PROMPT_YAML = """\
apiVersion: corral.dev/v1
kind: Prompt
metadata:
  name: analyst
spec:
  content: |
    Answer using the fs tools.
    {extra}
---
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: Answers questions about a codebase.
  owner: platform-team
  instructions_ref: prompts/analyst@{version}
  model: {{default: scripted/test}}
  tools: {{allowed: ["fs.*"]}}
"""

runner = CliRunner()


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    model = ScriptedModel(
        lambda request: (
            ScriptedModel.call("fs.list_dir", path=".")
            if len(request.messages) <= 2
            else ScriptedModel.answer("It prints 42.")
        )
    )
    settings = Settings(
        home=tmp_path / "home",
        runtime={"poll_interval_seconds": 0.02},
        workspaces={"roots": [tmp_path]},
    )
    app_ = create_app(Platform(settings, providers={"scripted": model}), local_admin=True)
    return cli_server(app_, home=settings.home)


def test_prompts_feedback_and_replay(server: str, tmp_path: Path) -> None:
    documents = tmp_path / "analyst.yaml"
    documents.write_text(PROMPT_YAML.format(extra="Be brief.", version="0.1.0"))
    applied = runner.invoke(app, ["apply", "-f", str(documents)])
    assert applied.exit_code == 0, applied.output
    assert "prompt/analyst created: 0.1.0" in applied.output
    assert "agent/repo-analyst created: 0.1.0" in applied.output
    documents.write_text(PROMPT_YAML.format(extra="Be thorough.", version="0.1.1"))
    applied = runner.invoke(app, ["apply", "-f", str(documents)])
    assert "prompt/analyst updated: 0.1.1" in applied.output
    assert "agent/repo-analyst updated: 0.1.1" in applied.output

    listed = runner.invoke(app, ["prompts", "list"])
    assert listed.output.splitlines()[1].split()[:2] == ["analyst", "0.1.1"]
    described = runner.invoke(app, ["prompts", "describe", "analyst@0.1.0"])
    assert "prompts/analyst@0.1.0" in described.output and "Be brief." in described.output
    history = described.output.splitlines()[1:4]  # the header, then every version, newest first
    assert [row.split()[0] for row in history] == ["VERSION", "0.1.1", "0.1.0"], described.output
    assert all(row.split()[1].startswith("sha256:") for row in history[1:]), described.output
    diff = runner.invoke(app, ["prompts", "diff", "analyst", "0.1.0", "0.1.1"])
    assert "-Be brief.\n+Be thorough.\n" in diff.output

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "main.py").write_text("print(42)\n")
    run = runner.invoke(app, ["run", "repo-analyst", "What?", "--workspace", str(workspace), "-F"])
    assert run.exit_code == 0, run.output
    run_id = runner.invoke(app, ["get", "runs", "-o", "name"]).output.strip()

    rated = runner.invoke(
        app, ["feedback", run_id, "--score", "-1", "--label", "terse", "--comment", "Too short."]
    )
    assert rated.exit_code == 0, rated.output
    assert f"recorded on run {run_id} (score -1)" in rated.output
    shown = runner.invoke(app, ["feedback", run_id])
    assert "-1  terse  user:local-admin  Too short." in shown.output
    refused = runner.invoke(app, ["feedback", run_id, "--score", "5"])
    assert refused.exit_code == 2

    replayed = runner.invoke(app, ["runs", "replay", run_id])
    assert replayed.exit_code == 0, replayed.output
    assert f"replays {run_id} (exact, repo-analyst@0.1.1)" in replayed.output
    what_if = runner.invoke(app, ["runs", "replay", run_id, "--agent", "repo-analyst@0.1.0"])
    assert "(what-if, repo-analyst@0.1.0)" in what_if.output
