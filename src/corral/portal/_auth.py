"""Login with an API key (verified exactly as Bearer auth) or with OIDC, logout."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from fastapi import Request
from starlette.responses import RedirectResponse, Response

from corral.errors import CorralError, Forbidden, InvalidRequest, Unauthorized
from corral.portal import _oidc
from corral.portal._routes import router
from corral.portal._session import (
    COOKIE_NAME,
    CSRF_FIELD,
    SESSION_SECONDS,
    new_cookie,
    new_user_cookie,
)
from corral.portal._web import PORTAL_PATH, form_of, platform_of, redirect, render, session_of
from corral.tenancy import end_session, end_sessions_of

__all__ = [
    "login_form",
    "login_submit",
    "logout",
    "logout_everywhere",
    "oidc_callback",
    "oidc_start",
]

_LOGIN_COOKIE = "corral_login"
"""Before a session exists, the login form's CSRF token is bound to this random cookie."""


def _login_token(request: Request, nonce: str) -> str:
    secret = platform_of(request).identity.server_secret
    return hmac.new(secret, f"corral.portal.login:{nonce}".encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    status_code: int = 200,
    idp_logout_url: str | None = None,
) -> Response:
    nonce = secrets.token_urlsafe(16)
    oidc = platform_of(request).identity.settings.oidc
    context = {
        "title": "Log in",
        "error": error,
        "csrf_token": _login_token(request, nonce),
        "oidc_host": _oidc.issuer_host(oidc) if oidc is not None else None,
        "idp_logout_url": idp_logout_url,
    }
    response = render(request, "login.html", context, status_code=status_code)
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
    """The login page: paste an API key, or sign in with OIDC.

    After an OIDC user's sign-out (``?signed_out=oidc``) it also links to the identity
    provider's logout (RP-Initiated Logout 1.0), built from the settings alone: the portal
    has already ended its own session, the provider's is the user's choice.
    """
    oidc = platform_of(request).identity.settings.oidc
    idp_logout_url = None
    if oidc is not None and request.query_params.get("signed_out") == "oidc":
        idp_logout_url = await _oidc.end_session_url(
            oidc, post_logout_redirect_uri=_post_logout_uri(request)
        )
    return _login_page(request, idp_logout_url=idp_logout_url)


def _post_logout_uri(request: Request) -> str:
    oidc = platform_of(request).identity.settings.oidc
    if oidc is not None and oidc.post_logout_redirect_url:
        return oidc.post_logout_redirect_url
    return f"{str(request.base_url).rstrip('/')}{PORTAL_PATH}/login"


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
    response = _start_session(request, new_cookie(identity, principal.key_id))
    response.delete_cookie(_LOGIN_COOKIE, path=PORTAL_PATH)
    return response


def _start_session(request: Request, cookie: str) -> Response:
    response = redirect(request, PORTAL_PATH)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=SESSION_SECONDS,
        path=PORTAL_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


def _redirect_uri(request: Request) -> str:
    oidc = platform_of(request).identity.settings.oidc
    if oidc is not None and oidc.redirect_url:
        return oidc.redirect_url
    return f"{str(request.base_url).rstrip('/')}{_oidc.STATE_PATH}/callback"


def _refused(request: Request, exc: CorralError) -> Response:
    status = {InvalidRequest: 400, Unauthorized: 401, Forbidden: 403}.get(type(exc), 401)
    response = _login_page(request, error=exc.message, status_code=status)
    response.delete_cookie(_oidc.STATE_COOKIE, path=_oidc.STATE_PATH)
    return response


@router.get("/login/oidc")
async def oidc_start(request: Request) -> Response:
    """Send the browser to the issuer (authorization code flow with PKCE)."""
    identity = platform_of(request).identity
    oidc = identity.settings.oidc
    if oidc is None:
        return _login_page(
            request,
            error="OIDC sign-in is not configured; log in with an API key.",
            status_code=400,
        )
    try:
        url, cookie = await _oidc.authorization_url(
            identity, oidc, redirect_uri=_redirect_uri(request)
        )
    except CorralError as exc:
        return _refused(request, exc)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        _oidc.STATE_COOKIE,
        cookie,
        max_age=_oidc.STATE_SECONDS,
        path=_oidc.STATE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


@router.get("/login/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    """The issuer's redirect back: check state, redeem the code, open the session."""
    identity = platform_of(request).identity
    oidc = identity.settings.oidc
    if oidc is None:
        return _refused(request, InvalidRequest("OIDC sign-in is not configured."))
    try:
        principal = await _oidc.complete_sign_in(
            identity,
            oidc,
            params=dict(request.query_params),
            cookie=request.cookies.get(_oidc.STATE_COOKIE),
            redirect_uri=_redirect_uri(request),
        )
        cookie = new_user_cookie(identity, principal)
    except CorralError as exc:
        return _refused(request, exc)
    response = _start_session(request, cookie)
    response.delete_cookie(_oidc.STATE_COOKIE, path=_oidc.STATE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session server-side (a copy of its cookie stops working) and delete the cookie."""
    session = await session_of(request)
    await end_session(
        platform_of(request).store,
        session.principal,
        session.session_id,
        expires_at=session.expires_at,
    )
    return _signed_out(request, oidc_user=session.oidc_user)


@router.post("/logout/everywhere")
async def logout_everywhere(request: Request) -> Response:
    """End every portal session of the caller's principal, in every browser (audited)."""
    session = await session_of(request)
    await end_sessions_of(
        platform_of(request).store,
        session.principal,
        session.principal.id,
        max_session=timedelta(seconds=SESSION_SECONDS),
    )
    return _signed_out(request, oidc_user=session.oidc_user)


def _signed_out(request: Request, *, oidc_user: bool) -> Response:
    # An OIDC user's login page offers the identity provider's logout as well.
    query = "?signed_out=oidc" if oidc_user else ""
    response = redirect(request, f"{PORTAL_PATH}/login{query}")
    response.delete_cookie(
        COOKIE_NAME, path=PORTAL_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )
    return response
