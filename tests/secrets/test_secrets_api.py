"""``/v1/secrets`` over HTTP, and ``corral secrets`` against a live server."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from _secrets_world import secret_settings_fixture  # noqa: F401
from typer.testing import CliRunner

from conftest import CliServer, PrincipalKeys
from corral.api import create_app
from corral.cli import app as cli
from corral.platform import Platform
from corral.secrets._crypto import MasterKey, SealedValue, decode_master_key, unseal
from corral.settings import Settings
from corral.tenancy import create_tenant

VALUE = "s3cr3t-planted-4e1f9b"


@contextlib.asynccontextmanager
async def serve(secret_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API as the local admin of ``default``; ``client.tenant_b`` acts in ``tenant-b``.

    Entered in the test's own task: the app's lifespan must end in the task it began in.
    """
    settings = secret_settings.model_copy(
        update={
            "governance": secret_settings.governance.model_copy(
                update={"roles": {"user:bob": ["builder"]}}
            )
        }
    )
    platform = Platform(settings)
    app = create_app(platform)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        await create_tenant(platform.store, tenant_id="tenant-b", display_name=None, actor="t")
        async with (
            httpx.AsyncClient(
                transport=transport, base_url="http://corral", auth=PrincipalKeys(platform)
            ) as default,
            httpx.AsyncClient(
                transport=transport,
                base_url="http://corral",
                auth=PrincipalKeys(platform, tenant_id="tenant-b"),
            ) as tenant_b,
        ):
            default.tenant_b = tenant_b  # type: ignore[attr-defined]
            yield default


async def test_put_list_delete_never_return_the_value(secret_settings: Settings) -> None:
    async with serve(secret_settings) as client:
        await _put_list_delete_never_return_the_value(client)


async def _put_list_delete_never_return_the_value(client: httpx.AsyncClient) -> None:
    created = await client.put("/v1/secrets/api-token", json={"value": VALUE})
    assert created.status_code == 201, created.text
    assert set(created.json()) == {
        "name",
        "version",
        "created_by",
        "updated_by",
        "created_at",
        "updated_at",
    }
    rotated = await client.put("/v1/secrets/api-token", json={"value": VALUE + "-2"})
    assert (rotated.status_code, rotated.json()["version"]) == (200, 2)
    for name in ("b-token", "c-token"):
        assert (await client.put(f"/v1/secrets/{name}", json={"value": VALUE})).status_code == 201
    first = (await client.get("/v1/secrets", params={"limit": 2})).json()
    assert [s["name"] for s in first["items"]] == ["api-token", "b-token"]
    assert first["next"] == "b-token"
    rest = (await client.get("/v1/secrets", params={"limit": 2, "after": "b-token"})).json()
    assert ([s["name"] for s in rest["items"]], rest["next"]) == (["c-token"], None)
    deleted = await client.delete("/v1/secrets/api-token")
    assert (deleted.status_code, deleted.json()["version"]) == (200, 2)
    missing = await client.delete("/v1/secrets/api-token")
    assert missing.status_code == 404
    assert "corral secrets set api-token" in missing.json()["message"]
    for response in (created, rotated, deleted, missing):
        assert VALUE not in response.text


async def test_bad_requests_get_clear_errors(secret_settings: Settings) -> None:
    async with serve(secret_settings) as client:
        await _bad_requests_get_clear_errors(client)


async def _bad_requests_get_clear_errors(client: httpx.AsyncClient) -> None:
    bad_name = await client.put("/v1/secrets/9lives", json={"value": VALUE})
    assert bad_name.status_code == 422  # the path's schema pattern
    assert "path.name" in bad_name.json()["message"]
    empty = await client.put("/v1/secrets/api-token", json={"value": ""})
    assert empty.status_code == 422 and "value" in empty.json()["message"]
    extra = await client.put("/v1/secrets/api-token", json={"value": VALUE, "note": VALUE})
    assert extra.status_code == 422 and VALUE not in extra.text
    huge = await client.put("/v1/secrets/api-token", json={"value": "x" * 70_000})
    assert huge.status_code == 400 and "x" * 100 not in huge.text


async def test_tenants_and_roles_are_enforced(secret_settings: Settings) -> None:
    async with serve(secret_settings) as client:
        await _tenants_and_roles_are_enforced(client)


async def _tenants_and_roles_are_enforced(client: httpx.AsyncClient) -> None:
    tenant_b: httpx.AsyncClient = client.tenant_b  # type: ignore[attr-defined]
    assert (await client.put("/v1/secrets/api-token", json={"value": VALUE})).status_code == 201
    assert (await tenant_b.get("/v1/secrets")).json()["items"] == []
    assert (await tenant_b.delete("/v1/secrets/api-token")).status_code == 404
    assert (await tenant_b.put("/v1/secrets/api-token", json={"value": "b"})).status_code == 201
    listed = (await client.get("/v1/secrets")).json()["items"]
    assert [(s["name"], s["version"]) for s in listed] == [("api-token", 1)]

    builder = {"X-Corral-Principal": "user:bob"}
    refused = await client.put("/v1/secrets/api-token", json={"value": "x"}, headers=builder)
    assert refused.status_code == 403 and "secrets.write" in refused.json()["message"]
    assert (await client.get("/v1/secrets", headers=builder)).status_code == 403


# --- the CLI against a live server ---------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def live(tmp_path: Path, cli_server: CliServer) -> Path:
    """A live server in the embedded mode (SQLite, no master key configured): its home."""
    home = tmp_path / "home"
    settings = Settings(home=home, runtime={"poll_interval_seconds": 0.02})
    cli_server(create_app(Platform(settings), local_admin=True), home=home)
    return home


def stored_value(home: Path, name: str) -> str:
    """Decrypt a stored secret with the generated master key (what a tool would receive)."""
    master = MasterKey.from_bytes(
        decode_master_key((home / "master.key").read_text()), source="test"
    )
    with sqlite3.connect(home / "corral.db") as db:
        row = db.execute(
            "SELECT id, tenant_id, version, master_key_id, wrapped_key, key_nonce, nonce, "
            "ciphertext FROM secrets WHERE name = ?",
            (name,),
        ).fetchone()
    sealed = SealedValue(*row[3:])
    return unseal(master, sealed, tenant_id=row[1], secret_id=row[0], version=row[2])


def test_cli_sets_from_stdin_lists_and_deletes(live: Path) -> None:
    created = runner.invoke(cli, ["secrets", "set", "api-token"], input=f"{VALUE}\n")
    assert created.exit_code == 0, created.output
    assert created.output.strip() == "secret/api-token created"
    assert stored_value(live, "api-token") == VALUE  # one trailing newline dropped
    assert (live / "master.key").stat().st_mode & 0o777 == 0o600

    rotated = runner.invoke(cli, ["secrets", "set", "api-token"], input="line1\nline2")
    assert rotated.output.strip() == "secret/api-token rotated to version 2"
    assert stored_value(live, "api-token") == "line1\nline2"

    listed = runner.invoke(cli, ["secrets", "list"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == ["NAME", "VERSION", "SET", "BY", "UPDATED", "CREATED"]
    assert row.split()[:3] == ["api-token", "2", "user:local-admin"]
    as_json = json.loads(runner.invoke(cli, ["secrets", "list", "-o", "json"]).output)
    assert [(s["name"], s["version"]) for s in as_json] == [("api-token", 2)]
    assert runner.invoke(cli, ["secrets", "list", "-o", "name"]).output == "api-token\n"

    deleted = runner.invoke(cli, ["secrets", "delete", "api-token"])
    assert deleted.output.strip() == "secret/api-token deleted (it was at version 2)"
    again = runner.invoke(cli, ["secrets", "delete", "api-token"])
    assert again.exit_code == 1 and "Secret 'api-token' is not set" in again.output
    assert "No secrets yet" in runner.invoke(cli, ["secrets", "list"]).output
    for result in (created, rotated, listed, deleted):
        assert VALUE not in result.output and "line1" not in result.output


def test_cli_refuses_an_empty_value_and_values_in_arguments(live: Path) -> None:
    for empty in ("", "\n"):
        result = runner.invoke(cli, ["secrets", "set", "api-token"], input=empty)
        assert result.exit_code == 2
        assert "no value for secret 'api-token' on stdin" in result.output
        assert "printf %s" in result.output
    in_argv = runner.invoke(cli, ["secrets", "set", "api-token", VALUE], input=VALUE)
    assert in_argv.exit_code == 2 and "unexpected extra argument" in in_argv.output.lower()
    bad_name = runner.invoke(cli, ["secrets", "set", "bad name"], input=VALUE)
    assert bad_name.exit_code == 2 and "path.name" in bad_name.output  # the schema's pattern
    assert runner.invoke(cli, ["secrets", "list", "-o", "name"]).output == ""
    assert base64.b64encode(VALUE.encode()).decode() not in in_argv.output


async def test_a_server_without_a_master_key_says_how_to_fix_it(settings: Settings) -> None:
    platform = Platform(settings)
    app = create_app(platform)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(platform),
        ) as client,
    ):
        response = await client.put("/v1/secrets/api-token", json={"value": VALUE})
    if settings.store_url.startswith("sqlite"):  # the embedded mode generates one
        assert response.status_code == 201
        assert (settings.home / "master.key").exists()
    else:
        assert response.status_code == 503
        assert "CORRAL_SECRETS__MASTER_KEY" in response.json()["message"]
        assert not (settings.home / "master.key").exists()
