"""``corral cancel``, ``corral runs resolve``, ``corral kill-switch`` and ``corral run --follow``
over Server-Sent Events, against a real server (uvicorn in a thread, SQLite, ScriptedModel)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from typer.testing import CliRunner

import corral.cli.runs
from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.cli._client import auth_headers
from corral.contracts import Tool
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools._fs import BuiltinTool
from corral.platform import Platform
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import utcnow
from corral.testing import ScriptedModel

AGENT_YAML = """\
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: Answers questions about a codebase.
  owner: platform-team
  instructions: Answer using the tools.
  model: {default: scripted/test}
  tools: {allowed: ["fs.*", "test.*"]}
"""

runner = CliRunner()


class Script:
    """The model. Task ``hold``: the first call waits for ``gate``. Task ``slow``: the answer
    waits for ``gate``. Task ``email``: send an email, then answer. Otherwise: list, answer."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    async def __call__(self, request: ModelRequest) -> ToolCall | FinalAnswer:
        task = request.messages[1].content
        answered = any(m.role == "tool" for m in request.messages)
        if "hold" in task or ("slow" in task and answered):
            for _ in range(6000):  # at most ~2 min; cancellable, unlike a blocking wait
                if self.gate.is_set():
                    break
                await asyncio.sleep(0.02)
        if answered:
            return ScriptedModel.answer("It prints 42.")
        if "email" in task:
            return ScriptedModel.call("test.send_email", to="a@example.com")
        return ScriptedModel.call("fs.list_dir", path=".")


def email_tool(sent: list[dict[str, Any]]) -> BuiltinTool:
    """A side-effecting tool that does not honour idempotency keys; its first call kills the
    worker mid-call, after the effect."""

    async def send(arguments: dict[str, Any], _workspace: Path | None, **_: Any) -> str:
        sent.append(arguments)
        if len(sent) == 1:
            raise asyncio.CancelledError
        return f"sent to {arguments['to']}"

    contract = Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": "test.send_email", "version": "1.0.0"},
            "spec": {"description": "Send an email.", "side_effect": "write"},
        }
    )
    return BuiltinTool(contract, send)


class Server:
    """What a test needs of the live server: its URL, model script, tool log and database."""

    def __init__(self, url: str, script: Script, sent: list[dict[str, Any]], db: Path) -> None:
        self.url, self.script, self.sent, self.db = url, script, sent, db

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/v1/runs/{run_id}", headers=auth_headers()).json())

    def wait_for(self, run_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        run: dict[str, Any] = {}
        for _ in range(2400):  # at most ~2 min (a loaded CI machine)
            run = self.run(run_id)
            if done(run):
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not get there: {run}")

    def expire_lease(self, run_id: str) -> None:
        """The worker that held the run is dead: let its lease run out now."""
        engine = sqlalchemy.create_engine(f"sqlite:///{self.db}")
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.update(RunRow)
                .where(RunRow.id == run_id)
                .values(lease_owner="dead-worker", lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        engine.dispose()


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> Iterator[Server]:
    """A live API with a worker and the agent applied; the CLI points at it."""
    script, sent = Script(), []
    settings = Settings(
        home=tmp_path / "home",
        runtime={"poll_interval_seconds": 0.02},
        workspaces={"roots": [tmp_path]},
    )
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(script)},
        builtins={"test.send_email": email_tool(sent)},
    )
    # The CLI sends the admin's key.
    url = cli_server(create_app(platform, local_admin=True), home=settings.home)
    (tmp_path / "agent.yaml").write_text(AGENT_YAML)
    applied = runner.invoke(app, ["apply", "-f", str(tmp_path / "agent.yaml")])
    assert applied.exit_code == 0, applied.output
    yield Server(url, script, sent, tmp_path / "home" / "corral.db")
    script.gate.set()


def start(task: str, *args: str) -> str:
    result = runner.invoke(app, ["run", "repo-analyst", task, *args])
    assert result.exit_code == 0, result.output
    match = re.search(r"run (run_\w+) created", result.output)
    assert match, result.output
    return match.group(1)


def test_cancel_a_running_run_then_an_ended_one(server: Server) -> None:
    run_id = start("hold on")
    server.wait_for(run_id, lambda run: run["status"] == "RUNNING")

    result = runner.invoke(app, ["cancel", run_id])
    assert result.exit_code == 0, result.output
    assert f"run {run_id} is RUNNING: cancel requested" in result.output
    run = server.wait_for(run_id, lambda run: run["status"] != "RUNNING")
    assert (run["status"], run["step_count"]) == ("CANCELLED", 0)

    again = runner.invoke(app, ["cancel", run_id])
    assert again.exit_code == 1
    assert f"Run {run_id!r} already ended CANCELLED; there is nothing to cancel." in again.output
    assert runner.invoke(app, ["cancel", "run_nope"]).exit_code == 1


def test_kill_switch_engage_refuses_runs_until_released(server: Server, tmp_path: Path) -> None:
    for flags in ([], ["--agent", "repo-analyst", "--all"]):
        wrong = runner.invoke(app, ["kill-switch", "engage", *flags, "--reason", "r"])
        assert wrong.exit_code == 2
        assert "choose exactly one of --agent NAME, --tenant TENANT or --all" in wrong.output
    no_reason = runner.invoke(app, ["kill-switch", "engage", "--agent", "repo-analyst"])
    assert (no_reason.exit_code, "--reason" in no_reason.output) == (2, True)

    engaged = runner.invoke(
        app, ["kill-switch", "engage", "--agent", "repo-analyst", "--reason", "INC-42: leaks"]
    )
    assert engaged.exit_code == 0, engaged.output
    described = "kill switch 'agent:repo-analyst' engaged by user:local-admin: INC-42: leaks"
    assert described in engaged.output
    assert "0 queued or paused run(s) killed" in engaged.output
    assert "corral kill-switch release --agent repo-analyst" in engaged.output

    refused = runner.invoke(app, ["run", "repo-analyst", "What does it do?"])
    assert refused.exit_code == 1
    assert described in refused.output
    assert "Release it with `corral kill-switch release --agent repo-analyst`" in refused.output
    twice = runner.invoke(
        app, ["kill-switch", "engage", "--agent", "repo-analyst", "--reason", "x"]
    )
    assert (twice.exit_code, "is already engaged" in twice.output) == (1, True)
    listed = runner.invoke(app, ["kill-switch", "list"]).output.splitlines()
    assert listed[0].split() == [
        "SCOPE",
        "TARGET",
        "ENGAGED",
        "BY",
        "ENGAGED",
        "RELEASED",
        "REASON",
    ]
    assert listed[1].split()[:3] == ["agent", "repo-analyst", "user:local-admin"]
    assert listed[1].endswith("INC-42: leaks")

    released = runner.invoke(app, ["kill-switch", "release", "--agent", "repo-analyst"])
    assert released.exit_code == 0, released.output
    assert "kill switch 'agent:repo-analyst' released by user:local-admin" in released.output
    assert "No kill switch is engaged." in runner.invoke(app, ["kill-switch", "list"]).output
    history = runner.invoke(app, ["kill-switch", "list", "--include-released"]).output
    assert "by user:local-admin  INC-42: leaks" in history
    server.script.gate.set()
    assert runner.invoke(app, ["run", "repo-analyst", "What does it do?", "-F"]).exit_code == 0
    unknown = runner.invoke(app, ["kill-switch", "release", "--agent", "repo-analyst"])
    assert (unknown.exit_code, "No engaged kill switch 'agent:repo-analyst'" in unknown.output) == (
        1,
        True,
    )


def test_kill_switch_all_kills_what_waits_and_stops_what_runs(server: Server) -> None:
    run_id = start("hold on")
    server.wait_for(run_id, lambda run: run["status"] == "RUNNING")
    engaged = runner.invoke(app, ["kill-switch", "engage", "--all", "--reason", "freeze"])
    assert engaged.exit_code == 0, engaged.output
    assert "kill switch 'platform:*' engaged by user:local-admin: freeze" in engaged.output
    run = server.wait_for(run_id, lambda run: run["status"] != "RUNNING")
    assert (run["status"], run["terminal_reason"]) == ("KILLED", "kill_switch")
    refused = runner.invoke(app, ["run", "repo-analyst", "x"])
    assert (refused.exit_code, "corral kill-switch release --all" in refused.output) == (1, True)
    assert runner.invoke(app, ["kill-switch", "release", "--all"]).exit_code == 0


def test_follow_streams_steps_and_reconnects_after_the_last_event(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stream silent for 0.3 s counts as dropped and is resumed. The model answers only once
    # the CLI has reported a dropped stream, so the test does not race a wall-clock timer.
    monkeypatch.setattr(corral.cli.runs, "_STREAM_READ_TIMEOUT_SECONDS", 0.3)
    echo = corral.cli.runs.typer.echo

    def echo_then_release(message: object = None, *args: Any, **kwargs: Any) -> None:
        echo(message, *args, **kwargs)
        if isinstance(message, str) and message.startswith("(connection lost"):
            server.script.gate.set()

    monkeypatch.setattr(corral.cli.runs.typer, "echo", echo_then_release)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "main.py").write_text("print(42)\n")

    result = runner.invoke(
        app, ["run", "repo-analyst", "slow", "--workspace", str(workspace), "-F"]
    )
    assert result.exit_code == 0, result.output
    # On a loaded machine the stream may also go silent before its first event: then there is
    # no event to resume after, and the reconnect starts from the beginning.
    assert re.search(
        r"\(connection lost: ReadTimeout; reconnecting( after event \d+)?\)", result.output
    )
    assert result.output.count("step 0  tool_calls") == 1
    assert result.output.count('fs.list_dir {"path": "."} -> COMPLETED') == 1
    assert result.output.count("step 1  final_answer") == 1
    assert "SUCCEEDED (final_answer): 2 steps, 1 tool calls" in result.output
    assert "Answer:\nIt prints 42." in result.output


def test_follow_shows_an_in_doubt_pause_and_resolve_resumes_the_run(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    # The person resolves only once the follower has printed the pause (no wall-clock wait).
    pause_shown = threading.Event()
    echo = corral.cli.runs.typer.echo

    def echo_and_signal(message: object = None, *args: Any, **kwargs: Any) -> None:
        echo(message, *args, **kwargs)
        if isinstance(message, str) and message.startswith("paused IN_DOUBT"):
            pause_shown.set()

    monkeypatch.setattr(corral.cli.runs.typer, "echo", echo_and_signal)

    def operator() -> None:
        """Another terminal: the dead worker's lease runs out, then a person resolves."""
        for _ in range(400):
            runs = httpx.get(f"{server.url}/v1/runs", headers=auth_headers()).json()["items"]
            if server.sent and runs:
                break
            time.sleep(0.05)
        run_id = runs[0]["id"]
        time.sleep(0.1)  # let the dead worker's task unwind
        server.expire_lease(run_id)
        server.wait_for(run_id, lambda run: run["status"] == "IN_DOUBT")
        assert pause_shown.wait(timeout=120), "the follower never printed the pause"
        response = httpx.post(
            f"{server.url}/v1/runs/{run_id}/resolve",
            json={"resolution": "retry", "comment": "no mail in the outbox"},
            headers=auth_headers(),
        )
        resolved.append(response.text)

    thread = threading.Thread(target=operator)
    thread.start()
    result = runner.invoke(app, ["run", "repo-analyst", "email", "-F", "--timeout", "60"])
    thread.join(timeout=30)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"run (run_\w+) created", result.output).group(1)  # type: ignore[union-attr]
    lines = result.output.splitlines()
    paused = next(i for i, line in enumerate(lines) if line.startswith("paused IN_DOUBT: "))
    assert f"tool call {run_id}:0:0 of 'test.send_email'" in lines[paused]
    assert lines[paused + 1].strip() == (
        f"resolve it with: corral runs resolve {run_id} --as done|retry|failed [--comment TEXT]"
    )
    assert "resumed as retry by user:local-admin" in lines[paused + 3]
    assert lines[paused + 4].startswith("step 0  tool_calls")
    assert lines[paused + 5].startswith('    test.send_email {"to": "a@example.com"} -> COMPLETED')
    assert "Answer:\nIt prints 42." in result.output
    assert len(server.sent) == 2

    again = runner.invoke(app, ["runs", "resolve", run_id, "--as", "done"])
    assert again.exit_code == 1
    assert f"Run {run_id!r} is SUCCEEDED, not IN_DOUBT" in again.output
    bogus = runner.invoke(app, ["runs", "resolve", run_id, "--as", "maybe"])
    assert bogus.exit_code == 2


def test_runs_resolve_settles_an_in_doubt_run(server: Server) -> None:
    run_id = start("email")
    for _ in range(400):
        if server.sent:
            break
        time.sleep(0.05)
    time.sleep(0.1)  # let the dead worker's task unwind
    server.expire_lease(run_id)
    server.wait_for(run_id, lambda run: run["status"] == "IN_DOUBT")

    result = runner.invoke(
        app, ["runs", "resolve", run_id, "--as", "done", "--comment", "the mail was sent"]
    )
    assert result.exit_code == 0, result.output
    assert f"tool call {run_id}:0:0 resolved as done; run {run_id} is" in result.output
    run = server.wait_for(run_id, lambda run: run["status"] == "SUCCEEDED")
    assert run["output"] == "It prints 42."
    assert len(server.sent) == 1  # done: not sent again
    [step, _] = httpx.get(f"{server.url}/v1/runs/{run_id}/steps", headers=auth_headers()).json()
    assert (
        "resolved as done by user:local-admin: the mail was sent"
        in (step["tool_calls"][0]["output"])
    )
