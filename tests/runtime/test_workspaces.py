"""Workspaces are governed resources: only under configured roots, never Corral's own data.

The attacks go through the real API as a tenant's builder, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import agent_document
from corral.errors import InvalidRequest, PolicyDenied
from corral.runtime import Workspaces
from corral.runtime._workspaces import _realpath
from corral.settings import Settings
from corral.testing import ScriptedModel
from tenancy._world import World, live_world

BUILDER: dict[str, Any] = {"principal": "service:ci", "roles": ["builder"]}


def canonical_path(path: Path) -> str:
    return os.path.realpath(path)


async def start_run(world: World, workspace: Path | str, **as_: Any) -> Any:
    return await world.as_(
        "POST",
        "/v1/agents/repo-analyst/runs",
        json={"task": "Read the keys.", "stage": "dev", "workspace": str(workspace)},
        **{**BUILDER, **as_},
    )


async def audit_events(world: World, action: str) -> list[dict[str, Any]]:
    page = await world.as_("GET", "/v1/audit/events", params={"limit": 1000})
    assert page.status_code == 200, page.text
    return [event for event in page.json()["items"] if event["action"] == action]


async def test_a_builder_cannot_point_a_run_at_corrals_own_files(
    settings: Settings, tmp_path: Path, workspace: Path
) -> None:
    # The fixture's settings make tmp_path a workspace root, and tmp_path holds CORRAL_HOME
    # (and on SQLite the database): a root that contains Corral's data.
    home = settings.home
    (tmp_path / "into-home").symlink_to(home)
    (tmp_path / "into-logs").symlink_to(home / "logs")
    nested = workspace / "pkg" / "innocent"
    nested.symlink_to(home, target_is_directory=True)
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        applied = await world.as_("POST", "/v1/apply", json={"documents": [agent_document()]})
        assert applied.status_code == 200, applied.text
        assert (home / "identity.key").is_file()
        attacks = {
            "the home": home,
            "a directory inside the home": home / "logs",
            "every tenant's workspaces": home / "workspaces",
            "a symlink to the home": tmp_path / "into-home",
            "a symlink into the home": tmp_path / "into-logs",
            "a symlink inside an allowed workspace": nested,
            "'..' back to the root": f"{workspace}/..",
            "the root that contains the home": tmp_path,
            "the filesystem root": "/",
        }
        for what, path in attacks.items():
            refused = await start_run(world, path)
            assert refused.status_code == 403, (what, refused.text)
            body = refused.json()
            assert body["code"] == "workspace_protected", (what, body)
            assert "CORRAL_WORKSPACES__ROOTS" in body["message"]
        assert (await world.as_("GET", "/v1/runs")).json()["items"] == []
        # An ordinary directory under the same root is fine.
        allowed = await start_run(world, workspace)
        assert allowed.status_code == 201, allowed.text


async def test_the_canonical_workspace_is_stored_and_audited(
    settings: Settings, tmp_path: Path, workspace: Path
) -> None:
    link = tmp_path / "link-to-workspace"
    link.symlink_to(workspace)
    canonical = canonical_path(workspace)
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await world.as_("POST", "/v1/apply", json={"documents": [agent_document()]})
        created = await start_run(world, f"{link}/pkg/..")
        assert created.status_code == 201, created.text
        assert created.json()["workspace"] == canonical
        events = await audit_events(world, "run.created")
        assert [event["details"]["workspace"] for event in events] == [canonical]


async def test_a_workspace_outside_the_tenants_roots_is_refused(
    settings: Settings, tmp_path: Path, workspace: Path
) -> None:
    only = tmp_path / "acme-only"
    only.mkdir()
    per_tenant = settings.workspaces.model_copy(update={"tenant_roots": {"acme": [only]}})
    settings = settings.model_copy(update={"workspaces": per_tenant})
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await world.tenant("acme")
        for tenant in ("default", "acme"):
            response = await world.as_(
                "POST",
                "/v1/apply",
                json={"documents": [agent_document()]},
                tenant=tenant,
            )
            assert response.status_code == 200, response.text
        # tenant_roots replaces the shared roots for acme: tmp_path is not its root.
        outside = await start_run(world, workspace, tenant="acme")
        assert outside.status_code == 403
        assert outside.json()["code"] == "workspace_not_allowed"
        assert "CORRAL_WORKSPACES__TENANT_ROOTS" in outside.json()["message"]
        assert (await start_run(world, only, tenant="acme")).status_code == 201
        # Each tenant's built-in root is its own: acme cannot use default's.
        defaults = world.platform.workspaces.ensure_builtin_root("default")
        (defaults / "project").mkdir()
        theirs = await start_run(world, defaults / "project", tenant="acme")
        assert (theirs.status_code, theirs.json()["code"]) == (403, "workspace_protected")
        mine = world.platform.workspaces.ensure_builtin_root("acme") / "project"
        mine.mkdir()
        assert (await start_run(world, mine, tenant="acme")).status_code == 201
        assert (await start_run(world, defaults / "project")).status_code == 201


WORKSPACE_POLICY = """
@id("allowed-workspaces-only")
@reason("Runs read only the checked-out repositories.")
forbid (principal, action == Action::"agent.invoke", resource)
unless { context has workspace && context.workspace like "REPOS/*" };
"""


async def test_a_policy_can_narrow_the_workspace(
    settings: Settings, tmp_path: Path, workspace: Path
) -> None:
    repos = tmp_path / "repos"
    (repos / "service").mkdir(parents=True)
    canonical = canonical_path(workspace)
    policy = {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "workspaces"},
        "spec": {
            "description": "Runs only on repositories.",
            "cedar": WORKSPACE_POLICY.replace("REPOS", canonical_path(repos)),
        },
    }
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        applied = await world.as_(
            "POST", "/v1/apply", json={"documents": [agent_document(), policy]}
        )
        assert applied.status_code == 200, applied.text
        denied = await start_run(world, workspace)
        assert denied.status_code == 403, denied.text
        assert "allowed-workspaces-only" in denied.json()["message"]
        assert (await start_run(world, repos / "service")).status_code == 201
        refusals = await audit_events(world, "agent.invoke")
        assert [(e["outcome"], e["details"]["workspace"]) for e in refusals] == [
            ("denied", canonical)
        ]


# --- the resolver on its own ---------------------------------------------------------------------


def workspaces(tmp_path: Path, **settings: Any) -> Workspaces:
    return Workspaces(Settings(home=tmp_path / "home", **settings))


def test_missing_relative_and_non_directory_workspaces_are_invalid(tmp_path: Path) -> None:
    resolver = workspaces(tmp_path, workspaces={"roots": [tmp_path]})
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    bad_paths = ("relative/dir", "", f"{tmp_path}/a\0b", "/" + "x" * 5000)
    for bad in (*bad_paths, str(tmp_path / "missing"), str(tmp_path / "file.txt")):
        with pytest.raises(InvalidRequest):
            resolver.resolve("default", bad)
    with pytest.raises(InvalidRequest):
        resolver.resolve("default", str(tmp_path / "loop"))


def test_a_database_outside_the_home_is_protected_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    resolver = workspaces(
        tmp_path,
        store={"url": f"sqlite+aiosqlite:///{data / 'corral.db'}"},
        workspaces={"roots": [tmp_path]},
    )
    with pytest.raises(PolicyDenied, match=r"corral\.db") as refused:
        resolver.resolve("default", str(data))
    assert refused.value.code == "workspace_protected"


def test_roots_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_WORKSPACES__ROOTS", f"/srv/a{os.pathsep}/srv/b")
    monkeypatch.setenv("CORRAL_WORKSPACES__TENANT_ROOTS", '{"acme": ["/srv/acme"]}')
    settings = Settings()
    assert settings.workspaces.roots == [Path("/srv/a"), Path("/srv/b")]
    assert settings.workspaces.tenant_roots == {"acme": [Path("/srv/acme")]}
    monkeypatch.setenv("CORRAL_WORKSPACES__ROOTS", '["/srv/c"]')
    assert Settings().workspaces.roots == [Path("/srv/c")]
    monkeypatch.setenv("CORRAL_WORKSPACES__ROOTS", "relative")
    with pytest.raises(ValueError, match="absolute"):
        Settings()


def test_the_mcp_endpoint_workspace_may_not_expose_corrals_data(tmp_path: Path) -> None:
    resolver = workspaces(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    assert resolver.check_endpoint_workspace(shared) == shared.resolve()
    (tmp_path / "home").mkdir(exist_ok=True)
    for exposing in (tmp_path, tmp_path / "home", resolver.builtin_root("default").parent):
        exposing.mkdir(parents=True, exist_ok=True)
        with pytest.raises(PolicyDenied, match="outside CORRAL_HOME") as refused:
            resolver.check_endpoint_workspace(exposing)
        assert refused.value.code == "workspace_protected"
    with pytest.raises(InvalidRequest, match="CORRAL_MCP_ENDPOINT__WORKSPACE"):
        resolver.check_endpoint_workspace(Path("relative"))


def test_realpath_with_known_parents_is_os_realpath(tmp_path: Path) -> None:
    """The check's shared-prefix realpath gives os.path.realpath's answer, symlinks included."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "a" / "f").write_text("")
    (tmp_path / "a" / "lx").symlink_to(tmp_path / "x")
    (tmp_path / "a" / "b" / "up").symlink_to("../..")
    (tmp_path / "x" / "back").symlink_to(tmp_path / "a" / "b")
    (tmp_path / "a" / "lf").symlink_to("f")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("missing/z")
    parts = ["a", "b", "lx", "up", "back", "f", "lf", "loop", "dangling", "missing", "..", "."]
    known: dict[str, str] = {}  # shared across the paths, as within one check
    for first in parts:
        for second in parts:
            for third in ("", "b", "lf", ".."):
                path = (
                    str(tmp_path / first / second / third)
                    if third
                    else str(tmp_path / first / second)
                )
                assert _realpath(path, known) == os.path.realpath(path), path
