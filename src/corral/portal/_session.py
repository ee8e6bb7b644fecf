"""Portal sessions: a signed, expiring cookie naming an API key id, and session-bound CSRF tokens.

The cookie is ``{key_id}.{expires_unix}.{nonce}.{mac}``: no secret of the key is in it. ``mac``
is HMAC-SHA256 (RFC 2104) over the other three parts under a secret derived from the server's
identity secret, so only this deployment can mint one. Every request re-checks the key itself
(:meth:`corral.tenancy.Identity.authenticate_key_id`): a revoked key ends its sessions.
The CSRF token is another HMAC, over the whole cookie value: it changes with every login and
is useless without the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request

from corral.errors import Unauthorized
from corral.tenancy import Identity, Principal

__all__ = [
    "COOKIE_NAME",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_SECONDS",
    "PortalSession",
    "load_session",
    "new_cookie",
]

COOKIE_NAME = "corral_session"
CSRF_FIELD = "csrf_token"
"""The hidden form field carrying the CSRF token."""
CSRF_HEADER = "X-CSRF-Token"
"""The header htmx sends it in (``hx-headers`` on ``<body>``)."""
SESSION_SECONDS = 8 * 3600
"""A session's lifetime: log in again after it."""

_COOKIE = re.compile(r"^([0-9a-f]{12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$")


def _secret(identity: Identity) -> bytes:
    """The portal's signing key, derived from (never equal to) the identity secret."""
    return hmac.new(identity.server_secret, b"corral.portal.session.v1", hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_cookie(identity: Identity, key_id: str, *, now: float | None = None) -> str:
    """A signed session cookie value for API key ``key_id``, valid :data:`SESSION_SECONDS`."""
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    nonce = secrets.token_urlsafe(16)
    body = f"{key_id}.{expires}.{nonce}"
    return f"{body}.{_mac(_secret(identity), body)}"


@dataclass(frozen=True)
class PortalSession:
    """A logged-in portal request.

    Attributes:
        principal: Who, re-authenticated from the key for this request.
        csrf_token: The token every POST of this session must carry.
    """

    principal: Principal
    csrf_token: str

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        return token is not None and hmac.compare_digest(token, self.csrf_token)


async def load_session(request: Request, identity: Identity) -> PortalSession:
    """The request's session from its cookie, the key re-checked.

    Raises:
        Unauthorized: no cookie, a forged or expired one, or a key that no longer works.
    """
    value = request.cookies.get(COOKIE_NAME, "")
    match = _COOKIE.match(value)
    if match is None:
        raise Unauthorized("Log in to the portal with an API key.")
    key_id, expires, _nonce, mac = match.groups()
    secret = _secret(identity)
    if not hmac.compare_digest(mac, _mac(secret, value.rpartition(".")[0])):
        raise Unauthorized("The portal session is not valid; log in again.")
    if int(expires) <= time.time():
        raise Unauthorized("The portal session expired; log in again.")
    principal = await identity.authenticate_key_id(key_id)
    return PortalSession(principal, _mac(secret, f"csrf:{value}"))
