"""The portal: server-rendered pages at ``/ui`` (Jinja2 + htmx), served by the API's app.

Pages read and write through the same service functions and permissions as the REST routes.
Sessions are signed cookies naming an API key or an OIDC user (see ``_session``; OIDC
sign-in with the authorization code flow and PKCE in ``_oidc``); every POST carries a
session-bound CSRF token; every response under ``/ui`` carries a strict CSP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from corral.errors import CorralError
from corral.portal import (
    _agents,
    _approvals,
    _audit,
    _auth,
    _live,
    _overview,
    _policies,
    _runs,
    _tenancy,
    _tools,
)
from corral.portal._pages import PAGES, NavPage
from corral.portal._routes import router
from corral.portal._web import PORTAL_PATH, PortalRoute, SecurityHeaders

__all__ = ["PAGES", "PORTAL_PATH", "NavPage", "mount_portal"]

_PAGE_MODULES = (
    _auth,
    _overview,
    _live,
    _runs,
    _approvals,
    _agents,
    _tools,
    _policies,
    _audit,
    _tenancy,
)  # each adds its routes to ``router``


def mount_portal(app: FastAPI, *, status_for: Callable[[CorralError], int]) -> None:
    """Serve the portal under ``/ui`` in ``app``.

    Args:
        app: The API's application (its ``state.platform`` is used).
        status_for: The API's mapping of errors to HTTP statuses, so that a page refuses
            exactly as the REST route does.
    """
    PortalRoute.status_for = staticmethod(status_for)
    app.include_router(router)
    static = Path(__file__).parent / "static"
    app.mount(f"{PORTAL_PATH}/static", StaticFiles(directory=static), name="portal-static")
    app.add_middleware(SecurityHeaders)
