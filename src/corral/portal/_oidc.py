"""Portal sign-in with OpenID Connect: the authorization code flow with PKCE.

OpenID Connect Core 1.0 section 3.1 with PKCE (RFC 7636, ``S256``). The flow keeps no server
memory, so any replica may serve the callback: ``state``, ``nonce`` and the code verifier ride
in a short-lived cookie (:data:`STATE_COOKIE`, path :data:`STATE_PATH`, HttpOnly, SameSite=Lax)
signed with HMAC-SHA256 under a key derived from the identity secret. The callback checks the
state in constant time, exchanges the code at the token endpoint (form-encoded, with the
verifier, and HTTP Basic client auth for a confidential client) and hands the ID token to
:meth:`corral.tenancy.Identity.authenticate_id_token`: the bearer token verifier plus the nonce,
so a user gets in the portal exactly the roles a bearer token of theirs gets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

from corral.errors import InvalidRequest, Unauthorized
from corral.settings import OidcSettings
from corral.tenancy import Identity, Principal

__all__ = [
    "STATE_COOKIE",
    "STATE_PATH",
    "STATE_SECONDS",
    "authorization_url",
    "complete_sign_in",
    "end_session_url",
    "issuer_host",
    "state_cookie",
]

STATE_COOKIE = "corral_oidc"
STATE_PATH = "/ui/login/oidc"
"""The state cookie's path: sent to the callback only."""
STATE_SECONDS = 600
"""How long a sign-in may take between leaving for the issuer and coming back, in seconds."""
DISCOVERY_CACHE_SECONDS = 3600.0
"""How long an issuer's discovery document is reused, in seconds."""

_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


def issuer_host(oidc: OidcSettings) -> str:
    """The issuer's host name, for the "Sign in with ..." button."""
    return urlsplit(oidc.issuer).hostname or oidc.issuer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _key(identity: Identity) -> bytes:
    return hmac.new(identity.server_secret, b"corral.portal.oidc.v1", hashlib.sha256).digest()


def state_cookie(
    identity: Identity, *, state: str, nonce: str, verifier: str, now: float | None = None
) -> str:
    """The signed state cookie value: ``{base64url(json)}.{mac}``, issued at ``now`` (Unix s)."""
    issued = int(time.time() if now is None else now)
    payload = {"s": state, "n": nonce, "v": verifier, "t": issued}
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{body}.{_b64(hmac.new(_key(identity), body.encode(), hashlib.sha256).digest())}"


def _read_state(identity: Identity, value: str | None) -> dict[str, Any]:
    """The state cookie's payload, if it is this deployment's and not older than 10 minutes."""
    restart = "start the sign-in again from the login page."
    if not value:
        raise InvalidRequest(
            f"The sign-in state cookie is missing (cookies blocked, or another browser?); {restart}"
        )
    body, _, mac = value.partition(".")
    expected = _b64(hmac.new(_key(identity), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, expected):
        raise InvalidRequest(f"The sign-in state cookie is not valid; {restart}")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload: dict[str, Any] = json.loads(raw)
        issued = int(payload["t"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidRequest(f"The sign-in state cookie is not valid; {restart}") from None
    if not 0 <= time.time() - issued <= STATE_SECONDS:
        raise InvalidRequest(
            f"The sign-in took longer than {STATE_SECONDS // 60} minutes; {restart}"
        )
    return payload


async def _discovery_document(oidc: OidcSettings) -> dict[str, Any]:
    """The issuer's discovery document (cached :data:`DISCOVERY_CACHE_SECONDS`).

    Raises:
        Unauthorized: it cannot be read or is not a JSON object.
    """
    url = f"{oidc.issuer.rstrip('/')}/.well-known/openid-configuration"
    cached = _discovery.get(url)
    if cached is None or time.monotonic() - cached[0] >= DISCOVERY_CACHE_SECONDS:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.get(url)
                response.raise_for_status()
                document = response.json()
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            raise Unauthorized(
                f"Cannot read the issuer's discovery document {url}: {exc}. Set "
                "CORRAL_IDENTITY__OIDC__AUTHORIZATION_ENDPOINT and __TOKEN_ENDPOINT instead."
            ) from None
        cached = (time.monotonic(), document)
        _discovery[url] = cached
    return cached[1]


async def _endpoints(oidc: OidcSettings) -> tuple[str, str]:
    """The authorization and token endpoints: configured, else from discovery (cached)."""
    if oidc.authorization_endpoint and oidc.token_endpoint:
        return oidc.authorization_endpoint, oidc.token_endpoint
    document = await _discovery_document(oidc)
    authorize = oidc.authorization_endpoint or document.get("authorization_endpoint")
    token = oidc.token_endpoint or document.get("token_endpoint")
    if not isinstance(authorize, str) or not isinstance(token, str):
        raise Unauthorized(
            f"The discovery document of {oidc.issuer} names no authorization or token "
            "endpoint; set CORRAL_IDENTITY__OIDC__AUTHORIZATION_ENDPOINT and __TOKEN_ENDPOINT."
        )
    return authorize, token


async def end_session_url(oidc: OidcSettings, *, post_logout_redirect_uri: str) -> str | None:
    """Where to send a signed-out user to end their session at the identity provider too.

    OpenID Connect RP-Initiated Logout 1.0, section 2: the ``end_session_endpoint`` (configured,
    else from discovery) with ``client_id`` and ``post_logout_redirect_uri`` (no
    ``id_token_hint``: the portal does not keep ID tokens).

    Returns:
        The URL, or ``None`` when the issuer offers no such endpoint or discovery fails (the
        portal sign-out itself never depends on the issuer).
    """
    endpoint: object = oidc.end_session_endpoint
    if not endpoint:
        try:
            endpoint = (await _discovery_document(oidc)).get("end_session_endpoint")
        except Unauthorized:
            return None
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        return None
    query = {
        "client_id": oidc.client_id or oidc.audience,
        "post_logout_redirect_uri": post_logout_redirect_uri,
    }
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}{urlencode(query)}"


async def authorization_url(
    identity: Identity, oidc: OidcSettings, *, redirect_uri: str
) -> tuple[str, str]:
    """Start a sign-in: where to send the browser, and the state cookie to set.

    Returns:
        ``(url, cookie)``: the authorization endpoint with ``response_type=code``,
        ``client_id``, ``redirect_uri``, ``scope``, ``state``, ``nonce``, ``code_challenge``
        (S256 of a fresh verifier) and ``code_challenge_method``; the signed state cookie value.

    Raises:
        Unauthorized: the endpoints are not configured and discovery failed.
    """
    authorize, _ = await _endpoints(oidc)
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)  # 64 characters (RFC 7636 section 4.1: 43 to 128)
    query = {
        "response_type": "code",
        "client_id": oidc.client_id or oidc.audience,
        "redirect_uri": redirect_uri,
        "scope": oidc.scopes,
        "state": state,
        "nonce": nonce,
        "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    separator = "&" if "?" in authorize else "?"
    url = f"{authorize}{separator}{urlencode(query)}"
    return url, state_cookie(identity, state=state, nonce=nonce, verifier=verifier)


async def complete_sign_in(
    identity: Identity,
    oidc: OidcSettings,
    *,
    params: Mapping[str, str],
    cookie: str | None,
    redirect_uri: str,
) -> Principal:
    """Finish a sign-in from the callback's query ``params`` and the state ``cookie``.

    Raises:
        InvalidRequest: the issuer sent ``error=``, no code, or a state that is not this
            browser's; the state cookie is missing, forged or older than :data:`STATE_SECONDS`.
        Unauthorized: the token endpoint refused the code (wrong verifier...) or failed, or
            the ID token does not verify (signature, issuer, audience, expiry, nonce).
        Forbidden: the user has no role in the tenant, or the tenant is suspended.
    """
    if "error" in params:
        detail = params.get("error_description") or "no description"
        raise InvalidRequest(
            f"The identity provider refused the sign-in: {params['error'][:100]} ({detail[:300]})."
        )
    saved = _read_state(identity, cookie)
    if not hmac.compare_digest(params.get("state", "").encode(), str(saved["s"]).encode()):
        raise InvalidRequest(
            "The sign-in's state does not match this browser's (a forged or stale link); "
            "start the sign-in again from the login page."
        )
    code = params.get("code")
    if not code:
        raise InvalidRequest("The identity provider sent no authorization code; sign in again.")
    id_token = await _exchange(oidc, code=code, verifier=str(saved["v"]), redirect_uri=redirect_uri)
    return await identity.authenticate_id_token(id_token, nonce=str(saved["n"]))


def _basic(client_id: str, secret: str) -> str:
    """HTTP Basic credentials, each part form-urlencoded first (RFC 6749 section 2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return f"Basic {base64.b64encode(pair.encode()).decode()}"


async def _exchange(oidc: OidcSettings, *, code: str, verifier: str, redirect_uri: str) -> str:
    """The ID token the token endpoint gives for ``code`` (RFC 6749 section 4.1.3)."""
    import httpx

    _, token_endpoint = await _endpoints(oidc)
    client_id = oidc.client_id or oidc.audience
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    headers = {"Accept": "application/json"}
    if oidc.client_secret is not None:  # client_secret_basic (RFC 6749 section 2.3.1)
        headers["Authorization"] = _basic(client_id, oidc.client_secret.get_secret_value())
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.post(token_endpoint, data=form, headers=headers)
        body = response.json() if response.content else {}
    except (httpx.HTTPError, ValueError) as exc:
        raise Unauthorized(f"The token endpoint {token_endpoint} failed: {exc}.") from None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error", "") if isinstance(body, dict) else ""
        raise Unauthorized(
            f"The token endpoint refused the code (HTTP {response.status_code} "
            f"{str(error)[:100]}); sign in again."
        )
    id_token = body.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise Unauthorized(
            "The token endpoint sent no ID token; check that the scopes include `openid`."
        )
    return id_token
