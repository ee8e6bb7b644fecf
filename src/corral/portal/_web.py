"""Rendering, security headers, sessions and errors for every portal route.

Jinja2 is imported on the first render, not with the package: a process that never serves a
page (a worker, the CLI) does not load it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError, Forbidden, Unauthorized
from corral.platform import Platform
from corral.portal._session import CSRF_FIELD, CSRF_HEADER, PortalSession, load_session

if TYPE_CHECKING:
    from jinja2 import Environment

    from corral.slo import SloBreach

__all__ = [
    "PORTAL_PATH",
    "PortalRoute",
    "SecurityHeaders",
    "form_of",
    "platform_of",
    "redirect",
    "render",
    "require",
    "session_of",
]

PORTAL_PATH = "/ui"
_HERE = Path(__file__).parent

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""No inline script or style anywhere: htmx is configured by a meta tag, CSRF rides in
``hx-headers``; charts are server-rendered SVG."""

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]

StatusFor = Callable[[CorralError], int]


class SecurityHeaders:
    """ASGI middleware: the portal's security headers on every response under ``/ui``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PORTAL_PATH and not path.startswith(PORTAL_PATH + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                message["headers"] = headers + _HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


@functools.cache
def _environment() -> Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def platform_of(request: Request) -> Platform:
    """The platform the app serves."""
    platform: Platform = request.app.state.platform
    return platform


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` with ``context`` plus the request, its session and the page list."""
    from corral.portal._pages import visible_pages

    session: PortalSession | None = getattr(request.state, "portal_session", None)
    page = (
        _environment()
        .get_template(template)
        .render(
            request=request,
            session=session,
            pages=visible_pages(session.principal) if session else [],
            slo_breaches=getattr(request.state, "portal_breaches", []),
            prefix=PORTAL_PATH,
            **context,
        )
    )
    return HTMLResponse(page, status_code=status_code)


def redirect(request: Request, path: str) -> Response:
    """See other ``path``; an htmx request is told to navigate there (``HX-Redirect``)."""
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": path})
    return RedirectResponse(path, status_code=303)


async def session_of(request: Request) -> PortalSession:
    """The request's session; for a POST, only with this session's CSRF token.

    Raises:
        Unauthorized: not logged in (the route class sends the login page).
        Forbidden: a POST without the session's CSRF token (``csrf_failed``).
    """
    session = await load_session(request, platform_of(request).identity)
    request.state.portal_session = session
    if request.method == "GET" and session.principal.can("agents.read"):
        request.state.portal_breaches = await _breaches(request, session.principal.tenant_id)
    if request.method == "POST":
        token = request.headers.get(CSRF_HEADER) or (await form_of(request)).get(CSRF_FIELD)
        if not session.csrf_ok(token):
            raise Forbidden(
                "This form's CSRF token is missing or belongs to another session; reload the "
                "page and submit it again.",
                code="csrf_failed",
            )
    return session


SLO_BANNER_TTL_SECONDS = 5.0
"""How long the SLO banner's breaches of a tenant are reused before the store is asked again."""


async def _breaches(request: Request, tenant_id: str) -> list[SloBreach]:
    """The tenant's breached objectives (as ``GET /v1/slo/breaches``), cached per app."""
    from corral.slo import active_breaches

    state = request.app.state
    cache: dict[str, tuple[float, list[SloBreach]]] | None = getattr(state, "portal_breaches", None)
    if cache is None:
        cache = state.portal_breaches = {}
    now = time.monotonic()
    cached = cache.get(tenant_id)
    if cached is not None and now - cached[0] < SLO_BANNER_TTL_SECONDS:
        return cached[1]
    async with platform_of(request).store.read(tenant_id) as db:
        breaches = await active_breaches(db, tenant_id=tenant_id)
    cache[tenant_id] = (now, breaches)
    return breaches


def require(session: PortalSession, permission: str) -> None:
    """Refuse (403) a principal without ``permission``, as the REST routes do.

    Raises:
        Forbidden: the principal's roles do not carry ``permission``.
    """
    principal = session.principal
    if not principal.can(permission):
        held = ", ".join(sorted(principal.roles)) or "no role"
        raise Forbidden(
            f"{principal.id} may not do this in tenant {principal.tenant_id!r}: it needs "
            f"permission {permission!r} and holds {held}. A tenant admin grants roles with "
            "`corral roles grant`.",
            code="permission_denied",
        )


async def form_of(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (first value of each field), read once per request."""
    cached: dict[str, str] | None = getattr(request.state, "portal_form", None)
    if cached is None:
        body = (await request.body()).decode("utf-8", errors="replace")
        cached = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        request.state.portal_form = cached
    return cached


class PortalRoute(APIRoute):
    """A portal route: errors become HTML pages (login for a missing session), not JSON.

    The status of each error comes from the API's one mapping (``status_for``, set by
    :func:`corral.portal.mount_portal`), so the portal and REST answer alike.
    """

    status_for: StatusFor = staticmethod(lambda _error: 500)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthorized as exc:
                if request.method == "GET":
                    return redirect(request, f"{PORTAL_PATH}/login")
                return _error_page(request, exc, 401)
            except CorralError as exc:
                return _error_page(request, exc, PortalRoute.status_for(exc))

        return handle


def _error_page(request: Request, error: CorralError, status_code: int) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": "Error", "status_code": status_code, "error": error},
        status_code=status_code,
    )
