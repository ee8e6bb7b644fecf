"""The embedded mode's local admin and the identity commands, against a live server."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.platform import Platform
from corral.settings import Settings

runner = CliRunner()


@pytest.fixture
def live(tmp_path: Path, cli_server: CliServer) -> Path:
    home = tmp_path / "home"
    settings = Settings(home=home, store={"url": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"})
    cli_server(create_app(Platform(settings), local_admin=True), home=home)
    return home


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_the_local_admin_key_is_written_0600_and_used_by_the_cli(live: Path) -> None:
    key_file = live / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("crl_")
    code, out = cli("whoami")
    assert code == 0, out
    assert "user:local-admin (user) in tenant 'default'" in out
    assert "platform-admin" in out


def test_keys_roles_tenants_and_quotas_commands(live: Path) -> None:
    code, out = cli("keys", "create", "--name", "ci-bot", "--role", "builder")
    assert code == 0, out
    key = next(line for line in out.splitlines() if line.startswith("crl_"))
    code, out = cli("whoami", env={"CORRAL_API_KEY": key})
    assert code == 0 and "service:ci-bot (service)" in out and "builder" in out
    code, out = cli("keys", "list", env={"CORRAL_API_KEY": key})
    assert code == 1 and "keys.manage" in out  # a builder may not manage keys
    code, out = cli("keys", "list")
    assert "ci-bot" in out and key not in out
    code, out = cli("roles", "grant", "group:platform-team", "operator")
    assert code == 0 and "group:platform-team holds 'operator'" in out
    code, out = cli("roles", "list")
    assert "group:platform-team" in out
    code, out = cli("quotas", "set", "runs_per_day", "10")
    assert code == 0 and "quota runs_per_day: 10" in out
    code, out = cli("quotas", "list")
    assert "runs_per_day" in out and "unlimited" in out
    code, out = cli("tenants", "create", "team-red", "--name", "Team Red")
    assert code == 0 and "CORRAL_TENANT=team-red" in out
    code, out = cli("tenants", "suspend", "team-red", "--reason", "audit")
    assert code == 0 and "suspended: audit" in out
    key_id = key.split("_")[1]
    code, out = cli("keys", "revoke", key_id)
    assert code == 0 and "revoked" in out
    code, out = cli("whoami", env={"CORRAL_API_KEY": key})
    assert code == 1 and "revoked" in out and "CORRAL_API_KEY" in out


def test_without_credentials_the_cli_says_how_to_get_them(live: Path) -> None:
    (live / "admin.key").unlink()
    code, out = cli("whoami")
    assert code == 1
    assert "corral keys create" in out and "CORRAL_API_KEY" in out


def test_users_personal_keys_and_who_each_key_counts_as(live: Path) -> None:
    code, out = cli("users", "create", "alice", "--display-name", "Alice Martin")
    assert code == 0, out
    assert "user:alice created (Alice Martin)" in out
    assert "corral keys create --user alice" in out
    code, out = cli("users", "list")
    assert code == 0 and "user:alice" in out and "Alice Martin" in out
    assert "user:local-admin" in out  # created by

    code, out = cli("keys", "create", "--user", "alice", "--role", "approver")
    assert code == 0, out
    assert "user:alice (approver), accountable: user:alice" in out
    personal = next(line for line in out.splitlines() if line.startswith("crl_"))
    code, out = cli("whoami", env={"CORRAL_API_KEY": personal})
    assert code == 0 and "user:alice (user)" in out and "accountable" not in out

    code, out = cli("keys", "create", "--name", "ci-bot", "--role", "approver")
    assert code == 0 and "accountable: user:local-admin" in out
    bot = next(line for line in out.splitlines() if line.startswith("crl_"))
    code, out = cli("whoami", env={"CORRAL_API_KEY": bot})
    assert "accountable: user:local-admin" in out

    code, out = cli("keys", "list")
    assert code == 0, out
    header, *rows = out.splitlines()
    assert "CREATED BY" in header and "ACCOUNTABLE" in header and "ROLES" in header
    [alice] = [r for r in rows if " alice " in f" {r} "]
    assert alice.split()[2:6] == ["user:alice", "user:local-admin", "user:alice", "approver"]
    [ci] = [r for r in rows if "ci-bot" in r]
    assert ci.split()[2:6] == ["service:ci-bot", "user:local-admin", "user:local-admin", "approver"]

    code, out = cli("keys", "create", "--user", "nobody", "--role", "viewer")
    assert code == 1 and "corral users create nobody" in out
    code, out = cli("keys", "create", "--role", "viewer")
    assert code != 0 and "--name" in out
