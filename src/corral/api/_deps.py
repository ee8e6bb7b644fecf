"""Request dependencies: the platform, a transaction, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from corral.platform import Platform
from corral.store import DEFAULT_TENANT

__all__ = ["Caller", "CallerDep", "PlatformDep", "ReadSessionDep", "SessionDep"]


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(_platform)]


async def _session(platform: PlatformDep) -> AsyncIterator[AsyncSession]:
    async with platform.store.transaction() as session:
        yield session


# "function" scope: the transaction commits before the response is sent, so a failed commit
# is reported to the caller instead of being lost after a 200.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]


async def _read_session(platform: PlatformDep) -> AsyncIterator[AsyncSession]:
    async with platform.store.read() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
"""A read-only snapshot for GET routes."""


@dataclass(frozen=True)
class Caller:
    """The authenticated principal and its tenant (the local admin until identity lands)."""

    principal: str
    tenant_id: str


def _caller(
    platform: PlatformDep,
    x_corral_principal: Annotated[str | None, Header()] = None,
) -> Caller:
    principal = "user:local-admin"
    if x_corral_principal and platform.settings.governance.trust_principal_header:
        principal = x_corral_principal
    return Caller(principal=principal, tenant_id=DEFAULT_TENANT)


CallerDep = Annotated[Caller, Depends(_caller)]
