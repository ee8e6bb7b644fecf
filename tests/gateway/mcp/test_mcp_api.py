"""``/v1/mcp-servers`` and ``/v1/tools/{name}/approve`` over HTTP, and the ``corral mcp`` /
``corral tools approve`` commands against a live server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _mcp_world import echo_server, server_document
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.platform import Platform
from corral.settings import GovernanceSettings, Settings

ROLES = {"user:dave": ["viewer"], "user:erin": ["admin"]}

Api = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with a viewer and a tenant admin (who approves tools)."""
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


async def apply(client: httpx.AsyncClient, *documents: dict[str, Any]) -> None:
    response = await client.post("/v1/apply", json={"documents": list(documents)})
    assert response.status_code == 200, response.text


async def test_sync_list_quarantine_and_approve_over_http(api: Api, tmp_path: Path) -> None:
    client = await api()
    description = tmp_path / "description.txt"
    description.write_text("Echoes the given text back.")
    await apply(client, echo_server(env={"CORRAL_ECHO_DESCRIPTION_FILE": str(description)}))

    synced = await client.post("/v1/mcp-servers/echo/sync")
    assert synced.status_code == 200, synced.text
    body = synced.json()
    assert "echo.echo" in body["added"] and body["quarantined"] == []
    listed = (await client.get("/v1/mcp-servers")).json()
    assert [s["name"] for s in listed] == ["echo"]
    pins = {t["name"]: t for t in listed[0]["tools"]}
    assert pins["echo.echo"]["status"] == "ACTIVE"
    assert pins["echo.echo"]["approved_by"] == "user:local-admin"
    tools = (await client.get("/v1/tools", params={"limit": 500})).json()["items"]
    assert {"echo.echo": "mcp"}.items() <= {t["name"]: t["type"] for t in tools}.items()

    description.write_text("Changed.")
    body = (await client.post("/v1/mcp-servers/echo/sync")).json()
    [quarantined] = body["quarantined"]
    assert quarantined["name"] == "echo.echo"
    digest = quarantined["digest"]

    # A viewer may not approve; a stale digest is a conflict; the right one is approved.
    viewer = await client.post(
        "/v1/tools/echo.echo/approve",
        json={"digest": digest},
        headers={"X-Corral-Principal": "user:dave"},
    )
    assert viewer.status_code == 403, viewer.text
    stale = await client.post(
        "/v1/tools/echo.echo/approve", json={"digest": pins["echo.echo"]["digest"]}
    )
    assert stale.status_code == 409 and digest in stale.json()["message"]
    approved = await client.post(
        "/v1/tools/echo.echo/approve",
        json={"digest": digest},
        headers={"X-Corral-Principal": "user:erin"},
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "ACTIVE"
    assert approved.json()["approved_by"] == "user:erin"

    missing = await client.post("/v1/mcp-servers/nope/sync")
    assert (missing.status_code, missing.json()["code"]) == (404, "mcp_server_not_found")
    extra = await client.post("/v1/tools/echo.echo/approve", json={"digest": digest, "x": 1})
    assert extra.status_code == 422


async def test_an_unreachable_server_answers_502_naming_it(api: Api, tmp_path: Path) -> None:
    client = await api()
    await apply(client, server_document("ghost", command=str(tmp_path / "missing")))
    response = await client.post("/v1/mcp-servers/ghost/sync")
    assert response.status_code == 502
    assert "MCP server 'ghost'" in response.json()["message"]


runner = CliRunner()


@pytest.fixture
def live(tmp_path: Path, cli_server: CliServer) -> Path:
    """A live API on SQLite, the CLI pointed at it; gives the echo description file."""
    settings = Settings(home=tmp_path / "home", runtime={"poll_interval_seconds": 0.02})
    description = tmp_path / "description.txt"
    description.write_text("Echoes the given text back.")
    cli_server(create_app(Platform(settings), local_admin=True), home=settings.home)
    document = echo_server(env={"CORRAL_ECHO_DESCRIPTION_FILE": str(description)})
    import yaml

    (tmp_path / "echo.yaml").write_text(yaml.safe_dump(document))
    applied = runner.invoke(app, ["apply", "-f", str(tmp_path / "echo.yaml")])
    assert applied.exit_code == 0, applied.output
    return description


def test_cli_sync_list_and_approve(live: Path) -> None:
    synced = runner.invoke(app, ["mcp", "sync", "echo"])
    assert synced.exit_code == 0, synced.output
    assert "added        echo.echo" in synced.output
    assert "8 added, 0 unchanged, 0 quarantined" in synced.output

    listed = runner.invoke(app, ["mcp", "list"])
    assert listed.exit_code == 0 and "echo" in listed.output and "stdio" in listed.output

    live.write_text("Changed under us.")
    changed = runner.invoke(app, ["mcp", "sync", "echo"])
    assert changed.exit_code == 3, changed.output
    line = next(ln for ln in changed.output.splitlines() if "QUARANTINED" in ln)
    reference = line.split("corral tools approve ")[1].strip()
    assert reference.startswith("echo.echo@sha256:")

    tools = runner.invoke(app, ["mcp", "list", "--tools"])
    assert "QUARANTINED" in tools.output and reference.split("@")[1] in tools.output

    bad = runner.invoke(app, ["tools", "approve", "echo.echo"])
    assert bad.exit_code == 2 and "NAME@DIGEST" in bad.output
    approved = runner.invoke(app, ["tools", "approve", reference])
    assert approved.exit_code == 0, approved.output
    assert "tool/echo.echo approved at sha256:" in approved.output
    assert "QUARANTINED" not in runner.invoke(app, ["mcp", "list", "--tools"]).output
