"""Entities and requests shared by the policy tests: tenant ``acme`` and a foreign tenant."""

from __future__ import annotations

from decimal import Decimal

from corral.policy import (
    Entity,
    EntityRef,
    PolicyAction,
    PolicyContext,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
)

BOT = EntityRef("Agent", "support-bot")
ALICE = EntityRef("User", "alice")


def agent(name: str = "support-bot", *, tenant: str = "acme", status: str = "active") -> Entity:
    attrs = {"tenant": tenant, "owner": "ops", "risk_tier": "low", "status": status}
    return Entity(EntityRef("Agent", name), attrs)


def user(name: str = "alice", *, tenant: str = "acme", roles: tuple[str, ...] = ()) -> Entity:
    return Entity(EntityRef("User", name), {"tenant": tenant, "roles": roles, "groups": ()})


def tool(name: str, side_effect: str, *, tenant: str = "acme") -> Entity:
    attrs = {
        "tenant": tenant,
        "owner": "ops",
        "side_effect": side_effect,
        "risk": "low",
        "kind": "builtin",
    }
    return Entity(EntityRef("Tool", name), attrs)


def model(name: str = "gpt-x") -> Entity:
    return Entity(EntityRef("Model", name), {"provider": "local", "name": name})


def request(
    resource: EntityRef,
    *,
    principal: EntityRef = BOT,
    action: PolicyAction = "tool.call",
    stage: str = "production",
    tenant: str = "acme",
    cost: Decimal = Decimal(0),
    path: str | None = None,
    destructive_allowed: bool = False,
) -> PolicyRequest:
    context = PolicyContext(
        tenant=tenant,
        stage=stage,
        requester="alice",
        estimated_cost_usd=cost,
        path=path,
        destructive_allowed=destructive_allowed,
    )
    return PolicyRequest(principal, action, resource, context)


def engine(text: str) -> PolicyEngine:
    """An engine from one multi-policy source (every policy carries an ``@id``)."""
    return PolicyEngine([PolicySource("test", text)])
