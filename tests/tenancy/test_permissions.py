"""Every route declares its permission; roles grant exactly what the table says."""

from __future__ import annotations

import pytest

from corral.api import create_app
from corral.platform import Platform
from corral.tenancy import PERMISSIONS, PUBLIC, ROLE_PERMISSIONS, permits
from tenancy._world import live_world


def test_every_route_in_the_openapi_document_declares_a_permission(settings) -> None:
    document = create_app(Platform(settings)).openapi()
    operations = [
        (path, method, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) > 30
    missing = [f"{m.upper()} {p}" for p, m, op in operations if "x-corral-permission" not in op]
    assert missing == []
    for path, method, op in operations:
        for permission in op["x-corral-permission"].split():
            assert permission == PUBLIC or permission in PERMISSIONS, (method, path, permission)
    public = sorted(p for p, _m, op in operations if op["x-corral-permission"] == PUBLIC)
    assert public == ["/healthz", "/readyz"]


def test_roles_carry_only_their_permissions() -> None:
    assert permits(["viewer"], "runs.read")
    assert not permits(["viewer"], "runs.create")
    assert permits(["builder"], "runs.create") and not permits(
        ["builder"], "runs.create.production"
    )
    assert permits(["operator"], "runs.create.production")
    assert permits(["approver"], "approvals.decide") and not permits(
        ["builder"], "approvals.decide"
    )
    assert permits(["admin"], "keys.manage") and not permits(["admin"], "tenants.manage")
    assert permits(["platform-admin"], "tenants.manage")
    assert not permits([], "runs.read")
    assert all(not permits(["agent"], p) for p in ("runs.read", "agents.write", "keys.manage"))
    assert set().union(*ROLE_PERMISSIONS.values()) <= PERMISSIONS


@pytest.mark.parametrize(
    ("roles", "method", "path", "body", "status"),
    [
        (["viewer"], "POST", "/v1/apply", {"documents": [{"kind": "Agent"}]}, 403),
        (["viewer"], "GET", "/v1/agents", None, 200),
        (["builder"], "POST", "/v1/role-grants", {"subject": "service:me", "role": "admin"}, 403),
        (["builder"], "POST", "/v1/kill-switches", {"scope": "tenant", "reason": "x"}, 403),
        (["admin"], "POST", "/v1/tenants", {"id": "other"}, 403),
        (["admin"], "POST", "/v1/keys", {"name": "root", "roles": ["platform-admin"]}, 403),
        (["operator"], "POST", "/v1/kill-switches", {"scope": "platform", "reason": "x"}, 403),
        (["operator"], "PUT", "/v1/quotas/runs_per_day", {"limit": 5}, 403),
    ],
)
async def test_routes_refuse_principals_without_the_permission(
    settings, roles, method, path, body, status
) -> None:
    async with live_world(settings) as world:
        response = await world.as_(
            method, path, principal="service:someone", roles=roles, json=body
        )
        assert response.status_code == status, response.text
        if status == 403:
            assert response.json()["code"] == "permission_denied" or "platform" in response.text


async def test_a_builder_may_run_in_dev_but_not_in_production(settings, workspace) -> None:
    from conftest import agent_document
    from corral.testing import ScriptedModel

    async with live_world(settings, scripted=ScriptedModel([])) as world:
        applied = await world.as_("POST", "/v1/apply", json={"documents": [agent_document()]})
        assert applied.status_code == 200, applied.text
        body = {"task": "hi", "workspace": str(workspace)}
        prod = await world.as_(
            "POST",
            "/v1/agents/repo-analyst/runs",
            principal="service:b",
            roles=["builder"],
            json={**body, "stage": "production"},
        )
        assert prod.status_code == 403 and "operator" in prod.json()["message"]
        dev = await world.as_(
            "POST",
            "/v1/agents/repo-analyst/runs",
            principal="service:b",
            roles=["builder"],
            json={**body, "stage": "dev"},
        )
        assert dev.status_code == 201, dev.text
        assert dev.json()["requested_by"] == "service:b"


def test_every_cli_command_declares_its_permission_in_its_help() -> None:
    import typer.main

    from corral.cli import app
    from corral.cli._permissions import COMMAND_PERMISSIONS, iter_commands

    commands = iter_commands(typer.main.get_command(app))
    assert len(commands) > 40
    undeclared = [path for path, _command in commands if path not in COMMAND_PERMISSIONS]
    assert undeclared == []
    missing_help = [path for path, c in commands if "Permission:" not in (c.help or "")]
    assert missing_help == []
    stale = set(COMMAND_PERMISSIONS) - {path for path, _command in commands}
    assert stale == set()
