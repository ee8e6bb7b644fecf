"""The authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from corral.tenancy._roles import permits

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    """Who makes a request, acting in which tenant, with which roles.

    Attributes:
        id: ``user:alice@example.com``, ``service:ci-bot`` or ``agent:repo-analyst``.
        tenant_id: The tenant the request acts in; every object it reads or writes is of it.
        roles: Roles held in that tenant (``platform-admin`` is global).
        kind: ``user`` (OIDC or the local admin), ``service`` (a service account's API key) or
            ``agent`` (an API key bound to one agent).
        agent: For ``agent`` principals, the agent's name.
        groups: For OIDC users, their groups.
        key_id: The API key used, if any.
        accountable: The human the credentials act for (``user:alice``): a user themselves, a
            service account's or agent key's creator's accountable human (the key's
            ``accountable``). Empty means :attr:`id`. Approvals count distinct ones.
    """

    id: str
    tenant_id: str
    roles: frozenset[str]
    kind: Literal["user", "service", "agent"]
    agent: str | None = None
    groups: tuple[str, ...] = field(default=())
    key_id: str | None = None
    accountable: str = ""

    def __post_init__(self) -> None:
        if not self.accountable:
            object.__setattr__(self, "accountable", self.id)

    @property
    def principal(self) -> str:
        """Same as :attr:`id` (the name the audit log and policies use)."""
        return self.id

    def can(self, permission: str) -> bool:
        """Whether one of the principal's roles carries ``permission``."""
        return permits(self.roles, permission)
