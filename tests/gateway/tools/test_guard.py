"""Path guards on every entry a tool reaches, and the hard-link rule.

A policy forbids ``secrets/``. Calls that name ``.``, ``a/..``, a symlink or a hard link must not
return names or contents from under it: directory-walking tools judge each entry with the call's
own decision and say how many they left out. First with a real policy engine and the tools
alone, then through a managed run and an inbound (MCP) call on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import agent_document
from corral.gateway.tools._direct import DirectToolCalls
from corral.gateway.tools._fs import BUILTIN_TOOLS
from corral.gateway.tools._guard import PathGuard, path_guard_scope
from corral.observability._tables import SpanRow
from corral.policy import (
    DEFAULT_POLICIES,
    Entity,
    EntityRef,
    PolicyContext,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
)
from corral.runtime._tables import RunEventRow
from corral.settings import Settings
from corral.tenancy import Principal
from corral.testing import ScriptedModel
from governance._world import World, open_world, policy_document

SECRET = "TOP-SECRET-VALUE"
NO_SECRETS = (
    '@id("no-secrets")\n'
    '@reason("Agents never see files under secrets/.")\n'
    'forbid (principal, action == Action::"tool.call", resource)\n'
    'when { context has path && (context.path == "secrets" || context.path like "secrets/*") };'
)
call = ScriptedModel.call


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``docs/`` (allowed), ``secrets/`` (forbidden), a symlink into it and a hard link to it."""
    root = tmp_path / "ws"
    (root / "docs").mkdir(parents=True)
    (root / "secrets" / "deep").mkdir(parents=True)
    (root / "docs" / "readme.md").write_text("hello docs\n")
    (root / "secrets" / "key.txt").write_text(f"{SECRET}\n")
    (root / "secrets" / "deep" / "more.txt").write_text(f"hello {SECRET}\n")
    (root / "public").symlink_to(root / "secrets", target_is_directory=True)
    (root / "docs" / "key-link.txt").symlink_to(root / "secrets" / "key.txt")
    os.link(root / "secrets" / "key.txt", root / "docs" / "notes.txt")  # a second name
    return root


def guard_for(tool: str, *policies: str) -> PathGuard:
    """The guard a call of ``tool`` on ``.`` gets from a real engine with ``policies``."""
    engine = PolicyEngine(
        [*DEFAULT_POLICIES, *(PolicySource(f"p{i}", text) for i, text in enumerate(policies))]
    )
    agent = Entity(
        EntityRef("Agent", "bot"),
        {"tenant": "t", "owner": "ops", "risk_tier": "low", "status": "active"},
    )
    resource = Entity(
        EntityRef("Tool", tool),
        {"tenant": "t", "owner": "ops", "side_effect": "read", "risk": "low", "kind": "builtin"},
    )
    request = PolicyRequest(
        agent.uid, "tool.call", resource.uid, PolicyContext("t", "dev", "user:a", path=".")
    )
    assert engine.evaluate(request, [agent, resource]).decision == "allow"
    if not engine.reads_path(request):
        return PathGuard(None)

    def decide(paths: Sequence[str]) -> list[bool]:
        # The batch must agree with one full evaluation per path.
        kinds = engine.decide_paths(request, [agent, resource], paths)
        for path, kind in zip(paths, kinds, strict=True):
            entry = PolicyRequest(
                agent.uid, "tool.call", resource.uid, PolicyContext("t", "dev", "user:a", path=path)
            )
            assert engine.evaluate(entry, [agent, resource]).decision == kind, path
        return [kind == "allow" for kind in kinds]

    return PathGuard(decide)


async def run_tool(name: str, workspace: Path, guard: PathGuard, **arguments: Any) -> str:
    with path_guard_scope(guard):
        return await BUILTIN_TOOLS[name].run(arguments, workspace, max_file_bytes=1_000_000)


# --- the tools with a real engine -----------------------------------------------------------------


@pytest.mark.parametrize("path", [".", "docs/..", "./"])
async def test_list_dir_leaves_out_forbidden_entries(workspace: Path, path: str) -> None:
    guard = guard_for("fs.list_dir", NO_SECRETS)
    output = await run_tool("fs.list_dir", workspace, guard, path=path)
    # "public" is a symlink to secrets/: its canonical path is forbidden too.
    assert output.splitlines() == [
        "docs/",
        "[skipped_by_policy: 2 entries left out; policy does not allow this call on them]",
    ]
    assert guard.skipped == 2


async def test_list_dir_hides_a_symlink_to_a_forbidden_file(workspace: Path) -> None:
    output = await run_tool(
        "fs.list_dir", workspace, guard_for("fs.list_dir", NO_SECRETS), path="docs"
    )
    assert output.splitlines()[:2] == ["notes.txt", "readme.md"]
    assert "key-link.txt" not in output
    assert "[skipped_by_policy: 1 entry left out" in output


@pytest.mark.parametrize("path", [".", "docs/..", "docs"])
async def test_search_text_returns_nothing_from_forbidden_paths(workspace: Path, path: str) -> None:
    guard = guard_for("fs.search_text", NO_SECRETS)
    output = await run_tool("fs.search_text", workspace, guard, query="secret", path=path)
    assert SECRET not in output and "secrets/" not in output
    assert "[skipped_by_policy:" in output
    # The hard link in docs/ is a file of secrets/ under another name: skipped, and said so.
    assert "[skipped_hard_links: 1 file has more than one hard link" in output
    found = await run_tool("fs.search_text", workspace, guard, query="hello", path=path)
    assert found.splitlines()[0] == "docs/readme.md:1: hello docs"


async def test_a_forbidden_directory_is_not_walked(workspace: Path) -> None:
    seen: list[str] = []
    engine_guard = guard_for("fs.search_text", NO_SECRETS)

    def decide(paths: Sequence[str]) -> list[bool]:
        seen.extend(paths)
        return [engine_guard.allows(path) for path in paths]

    await run_tool("fs.search_text", workspace, PathGuard(decide), query="hello")
    assert "secrets" in seen
    # Only the canonical path of the symlink docs/key-link.txt is asked about under secrets/.
    assert [p for p in seen if p.startswith("secrets/")] == ["secrets/key.txt"]


async def test_without_a_path_policy_every_entry_is_listed(workspace: Path) -> None:
    guard = guard_for("fs.list_dir")  # the default policies do not read context.path
    output = await run_tool("fs.list_dir", workspace, guard, path=".")
    assert output.splitlines() == ["docs/", "public/", "secrets/"]
    assert guard.skipped == 0


async def test_a_hard_linked_file_is_refused(workspace: Path) -> None:
    from corral.errors import ToolFailed

    with pytest.raises(ToolFailed) as info:
        await run_tool("fs.read_file", workspace, PathGuard(None), path="docs/notes.txt")
    assert info.value.code == "hard_link"
    assert "2 hard links" in info.value.message and "cp, not ln" in info.value.message
    assert "hello docs" in await run_tool(
        "fs.read_file", workspace, PathGuard(None), path="docs/readme.md"
    )


def test_the_tool_descriptions_state_the_rules() -> None:
    for name in ("fs.list_dir", "fs.search_text"):
        assert "skipped_by_policy" in BUILTIN_TOOLS[name].contract.spec.description
    for name in ("fs.read_file", "fs.search_text"):
        assert "hard link" in BUILTIN_TOOLS[name].contract.spec.description


# --- through the platform -----------------------------------------------------------------------


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with open_world(settings) as opened:
        yield opened


async def test_a_run_cannot_read_a_forbidden_directory_through_an_ancestor(
    world: World, workspace: Path
) -> None:
    await world.apply(agent_document(), policy_document("no-secrets", NO_SECRETS))
    steps = [
        call("fs.list_dir", path="."),
        call("fs.search_text", query="secret", path="docs/.."),
        call("fs.read_file", path="docs/notes.txt"),
        call("fs.read_file", path="secrets/key.txt"),
    ]
    run_id = await world.execute(*steps, workspace=str(workspace))

    calls = await world.calls(run_id)
    assert [(c.tool_name, c.status, c.error_type) for c in calls] == [
        ("fs.list_dir", "COMPLETED", None),
        ("fs.search_text", "COMPLETED", None),
        ("fs.read_file", "FAILED", "hard_link"),
        ("fs.read_file", "DENIED", "policy_denied"),
    ]
    assert all(SECRET not in (c.output or "") for c in calls)
    assert calls[0].output is not None and calls[0].output.startswith(
        "docs/\n[skipped_by_policy: 2"
    )
    assert calls[1].output is not None and "[skipped_by_policy:" in calls[1].output

    async with world.platform.store.read("default") as session:
        events = (
            await session.execute(
                select(RunEventRow.data).where(
                    RunEventRow.run_id == run_id, RunEventRow.type == "tool_call"
                )
            )
        ).scalars()
        skipped = [e["skipped_by_policy"] for e in events]
        spans = (
            await session.execute(select(SpanRow.attributes).where(SpanRow.run_id == run_id))
        ).scalars()
        span_skips = [
            a["corral.tool.skipped_by_policy"]
            for a in spans
            if "corral.tool.skipped_by_policy" in a
        ]
    assert skipped[0] == 2 and skipped[1] >= 1 and skipped[2:] == [0, 0]
    assert sorted(span_skips) == sorted(skipped[:2])


async def test_an_inbound_call_cannot_list_a_forbidden_directory(
    world: World, workspace: Path
) -> None:
    await world.apply(agent_document(), policy_document("no-secrets", NO_SECRETS))
    platform = world.platform
    calls = DirectToolCalls(
        platform.store,
        platform.tools,
        platform.governance,
        platform.tracing,
        stage="dev",
        workspace=workspace,
    )
    bot = Principal("agent:repo-analyst", "default", frozenset(), "agent", agent="repo-analyst")
    listing = await calls.call(bot, "fs.list_dir", {"path": "docs/.."})
    assert listing.status == "COMPLETED"
    assert "secrets" not in listing.text and "public" not in listing.text
    assert "[skipped_by_policy: 2 entries" in listing.text
    search = await calls.call(bot, "fs.search_text", {"query": "secret"})
    assert SECRET not in search.text
