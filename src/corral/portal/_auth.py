"""Login with an API key (verified exactly as Bearer auth), logout."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from starlette.responses import Response

from corral.errors import CorralError, Forbidden, Unauthorized
from corral.portal._routes import router
from corral.portal._session import COOKIE_NAME, CSRF_FIELD, SESSION_SECONDS, new_cookie
from corral.portal._web import PORTAL_PATH, form_of, platform_of, redirect, render, session_of

__all__ = ["login_form", "login_submit", "logout"]

_LOGIN_COOKIE = "corral_login"
"""Before a session exists, the login form's CSRF token is bound to this random cookie."""


def _login_token(request: Request, nonce: str) -> str:
    secret = platform_of(request).identity.server_secret
    return hmac.new(secret, f"corral.portal.login:{nonce}".encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(request: Request, *, error: str | None = None, status_code: int = 200) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = render(
        request,
        "login.html",
        {"title": "Log in", "error": error, "csrf_token": _login_token(request, nonce)},
        status_code=status_code,
    )
    response.set_cookie(
        _LOGIN_COOKIE,
        nonce,
        max_age=3600,
        path=PORTAL_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    """The login page: paste an API key."""
    return _login_page(request)


@router.post("/login")
async def login_submit(request: Request) -> Response:
    """Check the key as ``Authorization: Bearer`` would; on success set the session cookie."""
    form = await form_of(request)
    nonce = request.cookies.get(_LOGIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(form.get(CSRF_FIELD, ""), _login_token(request, nonce)):
        raise Forbidden(
            "The login form's CSRF token is missing or stale; reload the login page.",
            code="csrf_failed",
        )
    key = form.get("api_key", "").strip()
    identity = platform_of(request).identity
    try:
        principal = await identity.authenticate(f"Bearer {key}")
        if principal.key_id is None:
            raise Unauthorized("Log in with an API key (`crl_...`).")
    except CorralError as exc:
        return _login_page(request, error=exc.message, status_code=401)
    response = redirect(request, PORTAL_PATH)
    response.set_cookie(
        COOKIE_NAME,
        new_cookie(identity, principal.key_id),
        max_age=SESSION_SECONDS,
        path=PORTAL_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    response.delete_cookie(_LOGIN_COOKIE, path=PORTAL_PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (its cookie is deleted)."""
    await session_of(request)
    response = redirect(request, f"{PORTAL_PATH}/login")
    response.delete_cookie(
        COOKIE_NAME, path=PORTAL_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )
    return response
