"""Request dependencies: the platform, the authenticated caller, its permission, a transaction.

Every route declares the one permission it needs with :func:`requires`
(``caller: Annotated[Caller, requires("runs.read")]``); :func:`annotate_permissions` copies it
into the OpenAPI document as ``x-corral-permission``, and a test fails on any route without one.
Sessions are scoped to the caller's tenant (``corral.store.Store.transaction``).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import Forbidden, QuotaExceeded
from corral.gateway.tools import async_storage_url
from corral.observability import bind_log_values
from corral.platform import Platform
from corral.settings import IdentitySettings
from corral.tenancy import PERMISSIONS, PUBLIC, Principal

if TYPE_CHECKING:
    import limits
    from limits.aio.strategies import MovingWindowRateLimiter

__all__ = [
    "ApiRateLimiter",
    "Caller",
    "PlatformDep",
    "ReadSessionDep",
    "SessionDep",
    "annotate_permissions",
    "authenticate",
    "requires",
]

Caller = Principal
"""The authenticated principal of a request (an alias kept for the routes' readability)."""


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(_platform)]


class ApiRateLimiter:
    """Requests per principal (``identity.api_rate_limit``), in memory or Redis (``limits``).

    With the default rate and in-memory counters, ``limits`` (about 2 MB resident with its
    dependencies) is imported and the limiter built by the first authenticated request, so an
    idle `corral up` does not hold it; configured values are parsed (and refused) at once.

    Raises:
        ValueError: a configured rate is not in ``limits`` notation.
        limits.errors.ConfigurationError: a configured storage URL ``limits`` cannot use.
    """

    def __init__(self, rate: str, storage_url: str | None) -> None:
        self.rate = rate
        self.storage_url = storage_url
        self._built: tuple[list[limits.RateLimitItem], MovingWindowRateLimiter] | None = None
        fields = IdentitySettings.model_fields
        defaults = (fields["api_rate_limit"].default, fields["rate_limit_storage_url"].default)
        if (rate, storage_url) != defaults:
            self._build()

    def _build(self) -> tuple[list[limits.RateLimitItem], MovingWindowRateLimiter]:
        """The parsed rates and the limiter, built once (no ``await``: one build per process)."""
        if self._built is None:
            import limits
            from limits.aio.strategies import MovingWindowRateLimiter
            from limits.storage import storage_from_string

            storage = storage_from_string(async_storage_url(self.storage_url))
            self._built = (limits.parse_many(self.rate), MovingWindowRateLimiter(storage))
        return self._built

    async def hit(self, principal: Principal) -> None:
        """Count one request; raise :class:`QuotaExceeded` (429) over the limit."""
        items, limiter = self._built or self._build()
        for item in items:
            if not await limiter.hit(item, principal.tenant_id, principal.id):
                stats = await limiter.get_window_stats(item, principal.tenant_id, principal.id)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise QuotaExceeded(
                    f"Too many requests from {principal.id}: the limit is {item}. Retry in "
                    f"{wait} s.",
                    quota="api_requests",
                    limit=str(item),
                    current=str(item.amount),
                    retry_after_seconds=wait,
                )


async def authenticate(
    request: Request,
    platform: PlatformDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_corral_tenant: Annotated[
        str | None, Header(description="Tenant to act in (users and platform admins).")
    ] = None,
) -> Principal:
    """The request's principal: verify its credentials, check its tenant, count the request."""
    principal = await platform.identity.authenticate(authorization, tenant=x_corral_tenant)
    bind_log_values(tenant_id=principal.tenant_id, principal=principal.id)
    limiter: ApiRateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        await limiter.hit(principal)
    return principal


_PERMISSION_OF: dict[Callable[..., Any], str] = {}


def requires(permission: str) -> Any:
    """A dependency giving the caller, after checking it holds ``permission``.

    ``requires(PUBLIC)`` declares a route anyone may call; it then gives ``None``.

    Raises:
        ValueError: ``permission`` is not one of :data:`corral.tenancy.PERMISSIONS`.
    """
    if permission != PUBLIC and permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    if permission == PUBLIC:

        async def public() -> None:
            return None

        _PERMISSION_OF[public] = PUBLIC
        return Depends(public)

    async def check(caller: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not caller.can(permission):
            held = ", ".join(sorted(caller.roles)) or "no role"
            raise Forbidden(
                f"{caller.id} may not do this in tenant {caller.tenant_id!r}: it needs "
                f"permission {permission!r} and holds {held}. A tenant admin grants roles with "
                "`corral roles grant`.",
                code="permission_denied",
            )
        return caller

    _PERMISSION_OF[check] = permission
    return Depends(check)


def _permissions(dependant: Dependant) -> set[str]:
    found: set[str] = set()
    for dep in dependant.dependencies:
        if dep.call in _PERMISSION_OF:
            found.add(_PERMISSION_OF[dep.call])
        found |= _permissions(dep)
    return found


def annotate_permissions(app: FastAPI) -> None:
    """Write each route's permission into its OpenAPI operation (``x-corral-permission``)."""
    _annotate(app.router.routes)


def _annotate(routes: list[Any]) -> None:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            _annotate(included.routes)
        elif isinstance(route, APIRoute):
            found = _permissions(route.dependant)
            if found:
                route.openapi_extra = {
                    **(route.openapi_extra or {}),
                    "x-corral-permission": " ".join(sorted(found)),
                }


async def _session(
    platform: PlatformDep, caller: Annotated[Principal, Depends(authenticate)]
) -> AsyncIterator[AsyncSession]:
    async with platform.store.transaction(caller.tenant_id) as session:
        yield session


# "function" scope: the transaction commits before the response is sent, so a failed commit
# is reported to the caller instead of being lost after a 200.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
"""A transaction in the caller's tenant."""


async def _read_session(
    platform: PlatformDep, caller: Annotated[Principal, Depends(authenticate)]
) -> AsyncIterator[AsyncSession]:
    async with platform.store.read(caller.tenant_id) as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
"""A read-only snapshot in the caller's tenant, for GET routes."""
