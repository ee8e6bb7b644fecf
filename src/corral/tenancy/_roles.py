"""Roles and the permissions they carry.

Every REST route and CLI command declares one permission (``api/_deps.py`` ``requires``); a
caller may use it when one of its roles in the tenant carries it. Roles are per tenant, except
``platform-admin``, which is global and carries every permission.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = [
    "PERMISSIONS",
    "PLATFORM_ADMIN",
    "PUBLIC",
    "ROLES",
    "ROLE_PERMISSIONS",
    "TENANT_ROLES",
    "permits",
]

PUBLIC: Final = "public"
"""The permission of routes anyone may call without credentials (health)."""

PLATFORM_ADMIN: Final = "platform-admin"

_READ: Final = frozenset(
    {
        "agents.read",
        "runs.read",
        "audit.read",
        "policies.read",
        "approvals.read",
        "tools.read",
        "releases.read",
        "killswitch.read",
        "quotas.read",
        "identity.read",
        "users.read",
        # Every member may rate a run's answer (``POST /v1/runs/{id}/feedback``).
        "feedback.write",
    }
)

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "viewer": _READ,
    # Builders apply agents and tools and run them in dev and staging.
    "builder": _READ
    | {"agents.write", "tools.write", "runs.create", "releases.promote", "mcp.call", "models.call"},
    # Operators run in production, cancel, resolve and pause runs, and kill the tenant's agents;
    # they scrape /metrics (process-wide aggregates without tenant ids).
    "operator": _READ
    | {
        "metrics.read",
        "runs.create",
        "runs.create.production",
        "runs.control",
        "killswitch.tenant",
        "releases.promote",
        "mcp.call",
        "models.call",
    },
    "approver": _READ | {"approvals.decide"},
    # Admins manage the tenant: members, local users, keys, quotas, secrets, policies, tool
    # approvals.
    "admin": _READ
    | {
        "members.manage",
        "users.manage",
        "keys.manage",
        "quotas.manage",
        "secrets.read",
        "secrets.write",
        "policies.write",
        "tools.approve",
        "releases.promote",
    },
    # An agent identity (a key bound to one agent) calls Corral's gateways, nothing else.
    "agent": frozenset({"tools.read", "mcp.call", "models.call", "identity.read"}),
}

PERMISSIONS: Final = frozenset().union(*ROLE_PERMISSIONS.values()) | {
    "tenants.manage",
    "killswitch.all",
}
"""Every permission a route may declare (besides :data:`PUBLIC`)."""

TENANT_ROLES: Final = ("viewer", "builder", "operator", "approver", "admin")
"""Roles a tenant admin may grant."""

ROLES: Final = (*TENANT_ROLES, PLATFORM_ADMIN)


def permits(roles: Iterable[str], permission: str) -> bool:
    """Whether any of ``roles`` carries ``permission`` (``platform-admin`` carries all)."""
    if permission == PUBLIC:
        return True
    for role in roles:
        if role == PLATFORM_ADMIN:
            return True
        granted = ROLE_PERMISSIONS.get(role)
        if granted is not None and permission in granted:
            return True
    return False
