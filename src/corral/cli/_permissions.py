"""The permission each CLI command needs: the permission of the REST routes it calls.

:func:`declare_permissions` appends it to every command's ``--help``; a test fails when a
command is missing here. ``local`` commands run servers or read files and call no route.
"""

from __future__ import annotations

import inspect
from typing import Any, Final

import click
import typer

__all__ = ["COMMAND_PERMISSIONS", "LOCAL", "declare_permissions", "iter_commands"]

LOCAL: Final = "local"

COMMAND_PERMISSIONS: Final[dict[str, str]] = {
    "up": LOCAL,
    "worker": LOCAL,
    "db upgrade": LOCAL,
    "schema": LOCAL,
    "version": LOCAL,
    "status": "none (GET /readyz is public)",
    "policy test": LOCAL,
    "apply": "agents.write",
    "get": "agents.read, tools.read or runs.read (by resource)",
    "describe": "agents.read or runs.read (by resource)",
    "promote": "releases.promote",
    "rollback": "releases.promote",
    "promotions": "releases.read",
    "rollout start": "releases.promote",
    "rollout status": "releases.read",
    "rollout abort": "releases.promote",
    "experiments start": "releases.promote",
    "experiments status": "releases.read",
    "experiments stop": "releases.promote",
    "run": "runs.create (production: runs.create.production)",
    "trace": "runs.read",
    "cancel": "runs.control",
    "runs resolve": "runs.control",
    "runs replay": "runs.create",
    "approvals": "approvals.read",
    "approve": "approvals.decide",
    "reject": "approvals.decide",
    "kill-switch engage": "killswitch.tenant (--all: killswitch.all)",
    "kill-switch release": "killswitch.tenant (--all: killswitch.all)",
    "kill-switch list": "killswitch.read",
    "policy explain": "policies.read",
    "policy schema": "policies.read",
    "secrets set": "secrets.write",
    "secrets list": "secrets.read",
    "secrets delete": "secrets.write",
    "mcp sync": "tools.write",
    "mcp list": "tools.read",
    "models list": "agents.read",
    "models describe": "agents.read",
    "models test": "runs.create",
    "prompts list": "agents.read",
    "prompts describe": "agents.read",
    "prompts diff": "agents.read",
    "feedback": "feedback.write (listing: runs.read)",
    "tools approve": "tools.approve",
    "tools import-openapi": "agents.write",
    "audit verify": "audit.read",
    "audit events": "audit.read",
    "audit export": "audit.read",
    "costs": "runs.read",
    "eval run": "runs.create",
    "eval show": "runs.read",
    "eval list": "runs.read",
    "eval compare": "runs.read",
    "eval export": "runs.read",
    "eval add-case": "runs.read (writes the suite file locally)",
    "whoami": "identity.read",
    "tenants create": "tenants.manage",
    "tenants list": "tenants.manage",
    "tenants suspend": "tenants.manage",
    "tenants resume": "tenants.manage",
    "users create": "users.manage",
    "users list": "users.read",
    "keys create": "keys.manage",
    "keys list": "keys.manage",
    "keys revoke": "keys.manage",
    "roles grant": "members.manage",
    "roles revoke": "members.manage",
    "roles list": "members.manage",
    "quotas list": "quotas.read",
    "quotas set": "quotas.manage",
}
"""Command path -> permission (or :data:`LOCAL`)."""


def iter_commands(group: Any) -> list[tuple[str, Any]]:
    """Every leaf command under a click group (``typer.main.get_command(app)``) with its path."""
    found: list[tuple[str, Any]] = []
    context = click.Context(group)

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "list_commands"):  # a group (Typer's groups are not click.Group)
            for name in command.list_commands(context):
                child = command.get_command(context, name)
                if child is not None:
                    walk(child, f"{path} {name}".strip())
        else:
            found.append((path, command))

    walk(group, "")
    return found


def declare_permissions(app: typer.Typer) -> None:
    """Append ``Permission: ...`` to the help of every registered command of ``app``."""

    def walk(typer_app: typer.Typer, prefix: str) -> None:
        for info in typer_app.registered_commands:
            callback = info.callback
            name = info.name or (callback.__name__.replace("_", "-") if callback else "")
            permission = COMMAND_PERMISSIONS.get(f"{prefix} {name}".strip())
            base = info.help or inspect.getdoc(callback) or ""
            if permission is None or "Permission:" in base:
                continue
            note = "runs locally; calls no API route." if permission == LOCAL else permission
            info.help = f"{base}\n\nPermission: {note}".strip()
        for group in typer_app.registered_groups:
            if group.typer_instance is not None:
                walk(group.typer_instance, f"{prefix} {group.name or ''}".strip())

    walk(app, "")
