"""``corral approvals``, ``corral approve`` and ``corral reject`` against a real server
(uvicorn in a thread, SQLite, ScriptedModel), voting with each principal's own API key
(``CORRAL_API_KEY``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import CliServer, key_for
from corral.api import create_app
from corral.cli import app
from corral.cli._client import auth_headers
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

ROLES = {
    "user:local-admin": ["admin", "builder", "operator", "approver"],
    "user:alice": ["builder", "approver"],
    "user:bob": ["approver"],
}

DOCUMENTS = """\
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
---
apiVersion: corral.dev/v1
kind: Policy
metadata:
  name: listing-needs-approval
spec:
  description: Listing a directory needs an approver.
  cedar: |
    @id("listing-needs-approval")
    @decision("require_approval")
    @approver_role("approver")
    @reason("Listing a directory needs an approver.")
    forbid (principal, action == Action::"tool.call", resource == Tool::"fs.list_dir");
"""

runner = CliRunner()


def list_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("It prints 42.")
    return ToolCall("call_0", "fs.list_dir", {"path": "."})


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        runtime={"poll_interval_seconds": 0.02},
        governance={"roles": ROLES, "policy_refresh_seconds": 0},
        workspaces={"roots": [tmp_path]},
    )


@pytest.fixture
def server(server_settings: Settings, tmp_path: Path, cli_server: CliServer) -> str:
    """A live API with a worker, the agent and the policy applied; the CLI points at it.

    The CLI acts as the local admin (the key ``corral up`` writes) until :func:`as_` switches.
    """
    platform = Platform(server_settings, providers={"scripted": ScriptedModel(list_then_answer)})
    url = cli_server(create_app(platform, local_admin=True), home=server_settings.home)
    (tmp_path / "governed.yaml").write_text(DOCUMENTS)
    applied = runner.invoke(app, ["apply", "-f", str(tmp_path / "governed.yaml")])
    assert applied.exit_code == 0, applied.output
    return url


@pytest.fixture
def as_(server_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``as_("user:bob")``: the CLI acts with a key of that principal, with its ``ROLES``."""

    def act(principal: str) -> None:
        monkeypatch.setenv("CORRAL_API_KEY", key_for(server_settings, principal))

    return act


def wait_for(url: str, run_id: str, status: str) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for _ in range(400):  # at most ~20 s
        run = httpx.get(f"{url}/v1/runs/{run_id}", headers=auth_headers()).json()
        if run["status"] == status:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} is not {status}: {run}")


def paused_run(url: str, workspace: Path) -> tuple[str, str]:
    """Start a run (as the current CORRAL_API_KEY); its run id and approval request id."""
    started = runner.invoke(
        app, ["run", "repo-analyst", "What is here?", "--workspace", str(workspace)]
    )
    assert started.exit_code == 0, started.output
    match = re.search(r"run (run_\w+) created", started.output)
    assert match, started.output
    run_id = match.group(1)
    wait_for(url, run_id, "AWAITING_APPROVAL")
    [approval] = httpx.get(
        f"{url}/v1/approvals", params={"run_id": run_id}, headers=auth_headers()
    ).json()["items"]
    return run_id, approval["id"]


def test_list_show_approve_as_another_principal(
    server: str, workspace: Path, as_: Callable[[str], None]
) -> None:
    as_("user:alice")
    run_id, approval_id = paused_run(server, workspace)
    run = httpx.get(f"{server}/v1/runs/{run_id}", headers=auth_headers()).json()
    assert run["requested_by"] == "user:alice"  # the CLI sent her key

    listed = runner.invoke(app, ["approvals"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split()[:5] == ["ID", "STATUS", "RUN", "ACTION", "APPROVALS"]
    assert row.split()[:7] == [
        approval_id,
        "pending",
        run_id,
        "fs.list_dir",
        '{"path":',
        '"."}',
        "0/1",
    ]
    assert "approver" in row and "user:alice" in row

    shown = runner.invoke(app, ["approvals", approval_id])
    assert shown.exit_code == 0, shown.output
    assert f"approval {approval_id}  pending  (tool_call)" in shown.output
    assert f"run:        {run_id} (AWAITING_APPROVAL), step 0, call 0" in shown.output
    assert 'arguments:  {"path": "."}' in shown.output
    assert "digest:     sha256:" in shown.output
    assert "reason:     Listing a directory needs an approver." in shown.output
    assert "approvers:  0 of 1 from role approver" in shown.output

    own = runner.invoke(app, ["approve", approval_id])
    assert own.exit_code == 1
    assert "user:alice" in own.output and "may not approve their own request" in own.output

    as_("user:bob")
    approved = runner.invoke(app, ["approve", approval_id, "--comment", "looked at it"])
    assert approved.exit_code == 0, approved.output
    assert f"approval {approval_id} approved (1 of 1 approvals)." in approved.output
    assert f"run {run_id} is QUEUED again" in approved.output
    assert wait_for(server, run_id, "SUCCEEDED")["output"] == "It prints 42."

    twice = runner.invoke(app, ["approve", approval_id])
    assert twice.exit_code == 1 and "already approved" in twice.output
    assert runner.invoke(app, ["approvals"]).output == "No pending approval requests.\n"
    history = runner.invoke(app, ["approvals", "--status", "all", "--run", run_id])
    assert history.output.splitlines()[1].split()[:2] == [approval_id, "approved"]
    shown = runner.invoke(app, ["approvals", approval_id]).output
    assert "vote:       approve by user:bob (approver) at " in shown
    assert shown.rstrip().endswith(": looked at it")


def test_reject_needs_a_reason_and_ends_the_run(
    server: str, workspace: Path, as_: Callable[[str], None]
) -> None:
    as_("user:alice")
    run_id, approval_id = paused_run(server, workspace)
    as_("user:bob")
    no_reason = runner.invoke(app, ["reject", approval_id])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output

    rejected = runner.invoke(app, ["reject", approval_id, "--reason", "not this folder"])
    assert rejected.exit_code == 0, rejected.output
    assert f"approval {approval_id} rejected: not this folder" in rejected.output
    assert f"run {run_id} is REJECTED (approval_rejected)." in rejected.output
    run = wait_for(server, run_id, "REJECTED")
    assert run["terminal_reason"] == "approval_rejected"
    assert runner.invoke(app, ["approve", "apr_nope"]).exit_code == 1
