"""The CLI against a real Corral server (uvicorn in a thread, SQLite, ScriptedModel)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.platform import Platform
from corral.settings import Settings, get_settings
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    """A live API with a worker; the CLI is pointed at it through CORRAL_API__URL."""
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
    return cli_server(app_, home=settings.home)  # the CLI sends the admin's key


runner = CliRunner()


def test_apply_run_follow_trace_and_verify(server: str, tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "repo-analyst.yaml").write_text(AGENT_YAML)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "main.py").write_text("print(42)\n")

    first = runner.invoke(app, ["apply", "-f", str(agents)])
    assert first.exit_code == 0, first.output
    assert "agent/repo-analyst created: 0.1.0" in first.output
    again = runner.invoke(app, ["apply", "-f", str(agents)])
    assert "agent/repo-analyst unchanged (0.1.0)" in again.output

    (agents / "repo-analyst.yaml").write_text(AGENT_YAML.replace("Answers", "Explains"))
    dry = runner.invoke(app, ["apply", "-f", str(agents), "--dry-run"])
    assert "would be updated: 0.1.1 (was 0.1.0)" in dry.output
    assert "+  description: Explains" in dry.output
    described = runner.invoke(app, ["describe", "agent", "repo-analyst"])
    assert "Latest version: 0.1.0" in described.output  # the dry run wrote nothing
    assert "fs.read_file" in described.output

    run = runner.invoke(
        app, ["run", "repo-analyst", "What does it do?", "--workspace", str(workspace), "-F"]
    )
    assert run.exit_code == 0, run.output
    assert 'fs.list_dir {"path": "."} -> COMPLETED' in run.output
    assert "SUCCEEDED (final_answer)" in run.output
    assert "It prints 42." in run.output

    run_id = runner.invoke(app, ["get", "runs", "-o", "name"]).output.strip()
    assert run_id.startswith("run_")
    trace = runner.invoke(app, ["trace", run_id]).output.splitlines()
    assert trace[0].startswith("invoke_agent repo-analyst")
    assert any(line.startswith("  chat test") for line in trace)
    assert any(line.startswith("  execute_tool fs.list_dir") for line in trace)

    verify = runner.invoke(app, ["audit", "verify"])
    assert verify.exit_code == 0 and "verifies" in verify.output
    events = runner.invoke(app, ["audit", "events", "--run", run_id, "--json"]).output
    actions = [json.loads(line)["action"] for line in events.splitlines()]
    assert actions == ["run.created", "run.leased", "tool.call", "run.finished"]


def test_invalid_yaml_exits_2_with_file_field_and_line(server: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        AGENT_YAML.replace(
            "  owner: platform-team\n", "  owner: platform-team\n  limits: {max_iterations: 0}\n"
        )
    )
    result = runner.invoke(app, ["apply", "-f", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:8: spec.limits.max_iterations" in result.output
    assert "agents" in runner.invoke(app, ["get", "agents"]).output.lower()
    assert "repo-analyst" not in runner.invoke(app, ["get", "agents"]).output


def test_unknown_agent_exits_1_listing_known_agents(server: str, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(AGENT_YAML)
    runner.invoke(app, ["apply", "-f", str(tmp_path / "a.yaml")])
    result = runner.invoke(app, ["run", "nope", "hello"])
    assert result.exit_code == 1
    assert "Agent 'nope' not found (known agents: repo-analyst)" in result.output


def test_server_down_says_how_to_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API__URL", f"http://127.0.0.1:{_free_port()}")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["get", "agents"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "start it with `corral up`" in result.output


def test_schema_prints_the_agent_json_schema() -> None:
    result = runner.invoke(app, ["schema", "Agent"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert "spec" in schema["properties"] and "apiVersion" in schema["properties"]
    assert runner.invoke(app, ["schema", "Nope"]).exit_code == 2


def test_up_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port), "--no-local-model"])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output
    assert "--port N" in result.output


def test_apply_refuses_a_billion_laughs_file_and_a_duplicate_key(tmp_path: Path) -> None:
    # Refused while reading, before any request: no server needed.
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["apply", "-f", str(bomb)])
    assert result.exit_code == 2, result.output
    assert f"{bomb}:5: l4[" in result.output
    assert "aliases expand this document by more than 10000 nodes" in result.output

    twice = tmp_path / "twice.yaml"
    twice.write_text(AGENT_YAML + "  tools: {allowed: ['*']}\n")
    result = runner.invoke(app, ["apply", "-f", str(twice)])
    assert result.exit_code == 2, result.output
    assert f"{twice}:11: spec.tools: duplicate key 'tools' (first at line 10)" in result.output


def test_apply_warns_of_an_unmatched_tool_and_strict_fails(server: str, tmp_path: Path) -> None:
    agent = tmp_path / "agent.yaml"
    agent.write_text(AGENT_YAML.replace('["fs.*"]', '["fs.*", "fs.reed_file", "git.*"]'))
    strict = runner.invoke(app, ["apply", "-f", str(agent), "--strict"])
    assert strict.exit_code == 2, strict.output
    assert "spec.tools.allowed[1]: agent 'repo-analyst': 'fs.reed_file'" in strict.output
    assert "did you mean 'fs.read_file'?" in strict.output
    assert "spec.tools.allowed[2]" in strict.output
    assert "repo-analyst" not in runner.invoke(app, ["get", "agents"]).output

    applied = runner.invoke(app, ["apply", "-f", str(agent)])
    assert applied.exit_code == 0, applied.output
    assert "agent/repo-analyst created: 0.1.0" in applied.output
    assert (
        f"warning: {agent}: agent/repo-analyst: spec.tools.allowed[1]: 'fs.reed_file' matches "
        "no registered tool; did you mean 'fs.read_file'?"
    ) in applied.output
    assert "spec.tools.allowed[2]: 'git.*' matches no registered tool" in applied.output


def test_describe_and_get_print_json_and_yaml(server: str, tmp_path: Path) -> None:
    import yaml

    (tmp_path / "agent.yaml").write_text(AGENT_YAML)
    assert runner.invoke(app, ["apply", "-f", str(tmp_path / "agent.yaml")]).exit_code == 0
    as_json = runner.invoke(app, ["describe", "agent", "repo-analyst", "-o", "json"])
    assert as_json.exit_code == 0, as_json.output
    described = json.loads(as_json.output)
    assert (described["name"], described["owner"]) == ("repo-analyst", "platform-team")
    assert [v["version"] for v in described["versions"]] == ["0.1.0"]
    assert "fs.read_file" in described["allowed_tools"] and "stages" in described
    as_yaml = runner.invoke(app, ["describe", "agent", "repo-analyst", "--output", "yaml"])
    assert yaml.safe_load(as_yaml.output) == described
    listed = runner.invoke(app, ["get", "agents", "-o", "yaml"])
    assert listed.exit_code == 0, listed.output
    page = yaml.safe_load(listed.output)
    assert [a["name"] for a in page["items"]] == ["repo-analyst"]
    assert page["items"][0]["digest"] == described["digest"]
