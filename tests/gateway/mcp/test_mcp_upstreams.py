"""Real upstream MCP servers, pinned: server-everything, server-filesystem, server-memory (npm),
mcp-server-git and mcp-server-time (PyPI), imported and called through the tool gateway and
managed runs, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _mcp_world import call, npm_bin, python_bin, register_and_sync, server_document
from sqlalchemy import select

from conftest import PlatformFactory, agent_document, register
from corral.approvals import decide_approval, list_approvals
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.runtime import create_run
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import GovernanceSettings, Settings
from corral.testing import ScriptedModel

__all__ = ["npm_bin"]  # a fixture, used by name

ROLES = {"user:alice": ["builder"], "user:bob": ["approver"]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with an approver, and no policy caching."""
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


async def test_server_everything_tools_progress_and_declared_capabilities(
    make_platform: PlatformFactory, npm_bin: Path
) -> None:
    platform = await make_platform()
    document = server_document(
        "everything", command=str(npm_bin / "mcp-server-everything"), args=["stdio"]
    )
    result = await register_and_sync(platform, document)
    assert {
        "everything.echo",
        "everything.get-sum",
        "everything.get-tiny-image",
        "everything.trigger-long-running-operation",
    } <= set(result.added)
    # server-everything registers these only for clients declaring roots, sampling or
    # elicitation; Corral declares none of them.
    for conditional in (
        "get-roots-list",
        "trigger-sampling-request",
        "trigger-elicitation-request",
    ):
        assert f"everything.{conditional}" not in result.added

    events: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append((value, total, message))

    done = await call(
        platform,
        "everything.trigger-long-running-operation",
        {"duration": 0.3, "steps": 3},
        progress=progress,
    )
    assert done.status == "COMPLETED", done.output
    assert "Long running operation completed" in done.output
    assert [(v, t) for v, t, _ in events] == [(1, 3), (2, 3), (3, 3)]

    summed = await call(platform, "everything.get-sum", {"a": 2, "b": 40})
    assert summed.status == "COMPLETED" and "42" in summed.output
    image = await call(platform, "everything.get-tiny-image", {})
    assert "[image: image/png," in image.output
    invalid = await call(platform, "everything.get-sum", {"a": "two"})
    assert (invalid.status, invalid.error_type) == ("FAILED", "invalid_arguments")


async def test_filesystem_server_keeps_its_directories_and_denials_are_failed_results(
    make_platform: PlatformFactory, npm_bin: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "notes.txt").write_text("inside the allowed directory\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    platform = await make_platform()
    document = server_document(
        "files", command=str(npm_bin / "mcp-server-filesystem"), args=[str(allowed)]
    )
    result = await register_and_sync(platform, document)
    assert {"files.read_text_file", "files.write_file", "files.list_allowed_directories"} <= set(
        result.added
    )

    # No client roots reached the server: it still serves the directory it was started with.
    directories = await call(platform, "files.list_allowed_directories", {})
    assert directories.status == "COMPLETED"
    assert str(allowed.resolve()) in directories.output

    inside = await call(platform, "files.read_text_file", {"path": str(allowed / "notes.txt")})
    assert (inside.status, inside.output.strip()) == ("COMPLETED", "inside the allowed directory")
    outside = await call(platform, "files.read_text_file", {"path": str(tmp_path / "secret.txt")})
    assert (outside.status, outside.error_type) == ("FAILED", "mcp_tool_error")
    assert "Access denied" in outside.output and "MCP server 'files'" in outside.output
    assert "outside\n" not in outside.output


async def test_memory_server_writes_then_reads_its_graph(
    make_platform: PlatformFactory, npm_bin: Path, tmp_path: Path
) -> None:
    graph = tmp_path / "memory.jsonl"
    platform = await make_platform()
    document = server_document(
        "memory",
        command=str(npm_bin / "mcp-server-memory"),
        env={"MEMORY_FILE_PATH": str(graph)},
    )
    result = await register_and_sync(platform, document)
    assert {"memory.create_entities", "memory.read_graph"} <= set(result.added)
    entity = {"name": "corral", "entityType": "project", "observations": ["governs agents"]}
    created = await call(platform, "memory.create_entities", {"entities": [entity]})
    assert created.status == "COMPLETED", created.output
    read = await call(platform, "memory.read_graph", {})
    assert read.status == "COMPLETED" and "governs agents" in read.output
    assert "governs agents" in graph.read_text()


async def test_time_server_answers_through_the_gateway(make_platform: PlatformFactory) -> None:
    platform = await make_platform()
    document = server_document("clock", command=python_bin("mcp-server-time"))
    result = await register_and_sync(platform, document)
    assert result.added == ["clock.convert_time", "clock.get_current_time"]
    now = await call(platform, "clock.get_current_time", {"timezone": "UTC"})
    assert now.status == "COMPLETED", now.output
    assert json.loads(now.output)["timezone"] == "UTC"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit and one uncommitted file."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "agent@example.com")
    git(root, "config", "user.name", "Agent")
    (root / "README.md").write_text("# Demo\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "initial")
    (root / "notes.txt").write_text("a note\n")
    return root


def commit_notes(repo: Path) -> Any:
    def script(request: ModelRequest) -> ToolCall | FinalAnswer:
        done = [m for m in request.messages if m.role == "tool"]
        if not done:
            return ToolCall(
                "call_0", "git.git_add", {"repo_path": str(repo), "files": ["notes.txt"]}
            )
        if len(done) == 1:
            return ToolCall(
                "call_1", "git.git_commit", {"repo_path": str(repo), "message": "Add notes"}
            )
        return FinalAnswer(f"committed: {done[-1].content}")

    return script


async def test_a_git_commit_through_mcp_waits_for_an_approver(
    make_platform: PlatformFactory, repo: Path
) -> None:
    platform = await make_platform(scripted=ScriptedModel(commit_notes(repo)))
    document = server_document(
        "git", command=python_bin("mcp-server-git"), args=["--repository", str(repo)]
    )
    result = await register_and_sync(platform, document)
    assert {"git.git_add", "git.git_commit", "git.git_status", "git.git_reset"} <= set(result.added)
    agent = agent_document(
        tools={"allowed": ["git.git_add", "git.git_commit"]},
        approvals=[{"tools": ["git.git_commit"], "approver_role": "approver"}],
    )
    await register(platform, agent)
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Commit notes.txt.",
            requested_by="user:alice",
            governance=platform.governance,
        )
    await platform.worker.run_until_idle()

    assert await status_of(platform, run.id) == "AWAITING_APPROVAL"
    [request] = await list_approvals(platform.store, tenant_id="default", run_id=run.id)
    assert (request.tool, request.status) == ("git.git_commit", "pending")
    assert "notes.txt" in git(repo, "diff", "--cached", "--name-only")  # git_add ran
    assert git(repo, "log", "--format=%s").split() == ["initial"]  # no commit yet

    await decide_approval(
        platform.store,
        request.id,
        tenant_id="default",
        principal="user:bob",
        roles=["approver"],
        vote="approve",
    )
    await platform.worker.run_until_idle()
    assert await status_of(platform, run.id) == "SUCCEEDED"
    assert git(repo, "log", "--format=%s").splitlines() == ["Add notes", "initial"]
    async with platform.store.read("default") as session:
        calls = list(
            (
                await session.execute(
                    select(ToolCallRow.tool_name, ToolCallRow.status)
                    .where(ToolCallRow.run_id == run.id)
                    .order_by(ToolCallRow.step_index)
                )
            ).all()
        )
    assert [tuple(c) for c in calls] == [
        ("git.git_add", "COMPLETED"),
        ("git.git_commit", "COMPLETED"),
    ]


async def status_of(platform: Any, run_id: str) -> str:
    async with platform.store.read("default") as session:
        row = await session.get(RunRow, run_id)
        assert row is not None
        return row.status
