"""Portal sessions: a signed, expiring cookie naming a key or a user; session-bound CSRF tokens.

The cookie is ``{subject}.{expires_unix}.{nonce}.{mac}``: no secret of a key is in it. The
subject is an API key id (12 hex digits) or, after an OIDC sign-in, ``u-`` and the base64url of
``{"u": principal id, "t": tenant, "g": [groups]}``. ``mac`` is HMAC-SHA256 (RFC 2104) over the
other three parts under a secret derived from the server's identity secret, so only this
deployment can mint one. ``nonce`` is the session's id (random, 128 bits); the session was
issued :data:`SESSION_SECONDS` before ``expires_unix``. Every request re-checks the subject:
the key itself
(:meth:`corral.tenancy.Identity.authenticate_key_id`: a revoked key ends its sessions), or the
user's tenant and role grants (:meth:`corral.tenancy.Identity.authenticate_user`).
and that the session was not ended server-side (:func:`corral.tenancy.session_ended`: logout,
"sign out everywhere", an admin's sign-out; one store round trip, nothing cached).
The CSRF token is another HMAC, over the whole cookie value: it changes with every login and
is useless without the cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from corral.errors import Unauthorized
from corral.tenancy import Identity, Principal, session_ended

__all__ = [
    "COOKIE_NAME",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_SECONDS",
    "PortalSession",
    "load_session",
    "new_cookie",
    "new_user_cookie",
]

COOKIE_NAME = "corral_session"
CSRF_FIELD = "csrf_token"
"""The hidden form field carrying the CSRF token."""
CSRF_HEADER = "X-CSRF-Token"
"""The header htmx sends it in (``hx-headers`` on ``<body>``)."""
SESSION_SECONDS = 8 * 3600
"""A session's lifetime: log in again after it."""

_COOKIE = re.compile(
    r"^([0-9a-f]{12}|u-[A-Za-z0-9_-]{1,3000})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})"
    r"\.([A-Za-z0-9_-]{43})$"
)


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


def new_user_cookie(identity: Identity, principal: Principal, *, now: float | None = None) -> str:
    """A signed session cookie value for an OIDC user, valid :data:`SESSION_SECONDS`.

    Raises:
        Unauthorized: the user's groups do not fit in a cookie (about 2 KB of names).
    """
    subject = {"u": principal.id, "t": principal.tenant_id, "g": list(principal.groups)}
    encoded = base64.urlsafe_b64encode(json.dumps(subject, separators=(",", ":")).encode())
    body = encoded.decode().rstrip("=")
    if len(body) > 3000:
        raise Unauthorized(
            f"{principal.id} is in too many groups for a portal session; ask the identity "
            "provider's admin to send fewer groups to Corral, or log in with an API key."
        )
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    body = f"u-{body}.{expires}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(_secret(identity), body)}"


def _user_of(subject: str) -> tuple[str, str, tuple[str, ...]]:
    """Principal id, tenant and groups of a signed ``u-...`` subject."""
    encoded = subject[2:]
    try:
        value = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        return str(value["u"]), str(value["t"]), tuple(str(g) for g in value["g"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise Unauthorized("The portal session is not valid; log in again.") from None


_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PortalSession:
    """A logged-in portal request.

    Attributes:
        principal: Who, re-authenticated from the key for this request.
        csrf_token: The token every POST of this session must carry.
        session_id: The random id in the cookie (logout ends it server-side).
        expires_at: When the cookie expires (UTC).
        oidc_user: Whether the session was opened by an OIDC sign-in (not an API key).
    """

    principal: Principal
    csrf_token: str
    session_id: str = ""
    expires_at: datetime = _NEVER
    oidc_user: bool = False

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        return token is not None and hmac.compare_digest(token, self.csrf_token)


async def load_session(request: Request, identity: Identity) -> PortalSession:
    """The request's session from its cookie, the key re-checked.

    Raises:
        Unauthorized: no cookie, a forged or expired one, a key that no longer works, or a
            session ended server-side.
    """
    value = request.cookies.get(COOKIE_NAME, "")
    match = _COOKIE.match(value)
    if match is None:
        raise Unauthorized("Log in to the portal with an API key.")
    subject, expires, session_id, mac = match.groups()
    secret = _secret(identity)
    if not hmac.compare_digest(mac, _mac(secret, value.rpartition(".")[0])):
        raise Unauthorized("The portal session is not valid; log in again.")
    if int(expires) <= time.time():
        raise Unauthorized("The portal session expired; log in again.")
    oidc_user = subject.startswith("u-")
    if oidc_user:
        user, tenant_id, groups = _user_of(subject)
        principal = await identity.authenticate_user(user, tenant_id=tenant_id, groups=groups)
    else:
        principal = await identity.authenticate_key_id(subject)
    expires_at = datetime.fromtimestamp(int(expires), UTC)
    issued_at = datetime.fromtimestamp(int(expires) - SESSION_SECONDS, UTC)
    if await session_ended(identity.store, principal, session_id, issued_at=issued_at):
        raise Unauthorized("This portal session was signed out; log in again.")
    csrf = _mac(secret, f"csrf:{value}")
    return PortalSession(principal, csrf, session_id, expires_at, oidc_user=oidc_user)
