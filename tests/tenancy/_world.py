"""A live app with several tenants and keys, for the identity tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings
from corral.tenancy import ROLES, issue_key


@dataclass
class World:
    """The platform, an ASGI client without credentials, and helpers to act as principals."""

    platform: Platform
    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    async def key(self, tenant: str, principal: str, roles: list[str]) -> str:
        """A real API key for ``principal`` in ``tenant`` with ``roles`` (issued once)."""
        if (tenant, principal) not in self.keys:
            kind = principal.partition(":")[0]
            self.keys[(tenant, principal)] = await issue_key(
                self.platform.store,
                server_secret=self.platform.identity.server_secret,
                tenant_id=tenant,
                principal=principal,
                roles=roles,
                name=f"{principal.replace(':', '-')}",
                kind=kind if kind in ("service", "agent") else "user",
            )
        return self.keys[(tenant, principal)]

    async def headers(
        self, tenant: str = "default", principal: str = "user:root", roles: list[str] | None = None
    ) -> dict[str, str]:
        """``Authorization`` headers for ``principal`` (default: every role)."""
        key = await self.key(tenant, principal, list(ROLES) if roles is None else roles)
        return {"Authorization": f"Bearer {key}"}

    async def as_(
        self,
        method: str,
        url: str,
        *,
        tenant: str = "default",
        principal: str = "user:root",
        roles: list[str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request as ``principal`` of ``tenant``."""
        headers = {**await self.headers(tenant, principal, roles), **kwargs.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kwargs)

    async def tenant(self, tenant_id: str) -> None:
        """Create a tenant through the API, as a platform admin of ``default``."""
        response = await self.as_("POST", "/v1/tenants", json={"id": tenant_id})
        assert response.status_code == 201, response.text


@asynccontextmanager
async def live_world(settings: Settings, **providers: Any) -> AsyncIterator[World]:
    """The app with its lifespan running (worker included) and a credential-less client."""
    platform = Platform(settings, providers=providers)
    app = create_app(platform)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral")
    try:
        yield World(platform, client)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
