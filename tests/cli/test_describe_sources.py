"""``corral describe run`` shows a repeated call and the sources a final answer cites."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.gateway.models import FinalAnswer
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
  answer: {cite_sources: true}
"""


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    model = ScriptedModel(
        [
            ScriptedModel.call("fs.list_dir", path="."),
            ScriptedModel.call("fs.list_dir", path="."),
            FinalAnswer("It prints 42.", ("main.py",)),
        ]
    )
    settings = Settings(
        home=tmp_path / "home",
        runtime={"poll_interval_seconds": 0.02},
        workspaces={"roots": [tmp_path]},
    )
    app_ = create_app(Platform(settings, providers={"scripted": model}), local_admin=True)
    return cli_server(app_, home=settings.home)


def test_describe_run_shows_the_repeat_and_the_sources(server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    agent = tmp_path / "agent.yaml"
    agent.write_text(AGENT_YAML)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "main.py").write_text("print(42)\n")
    assert runner.invoke(app, ["apply", "-f", str(agent)]).exit_code == 0
    run = runner.invoke(
        app, ["run", "repo-analyst", "What does it do?", "--workspace", str(workspace), "-F"]
    )
    assert run.exit_code == 0, run.output

    run_id = runner.invoke(app, ["get", "runs", "-o", "name"]).output.strip()
    described = runner.invoke(app, ["describe", "run", run_id]).output
    assert 'fs.list_dir {"path": "."} -> REPEATED (not executed' in described
    assert "    sources: main.py" in described
    assert "Sources:  main.py" in described
    assert "It prints 42.\n\nSources: main.py" in described
