"""A fake OpenID Connect provider: discovery, JWKS, ``/authorize`` and ``/token`` over real HTTP.

It serves on 127.0.0.1 with an ephemeral port, in a thread of its own. ``/authorize`` approves
:attr:`FakeOidcProvider.user` at once (a redirect back with ``code`` and ``state``, or with
``error`` when :attr:`FakeOidcProvider.error` is set) and remembers the PKCE challenge;
``/token`` redeems a code once, only with the same ``redirect_uri`` and a ``code_verifier``
whose S256 is the challenge (RFC 7636 section 4.6), and returns an RS256 ID token carrying the
request's nonce and :attr:`FakeOidcProvider.claims`.

```python
from corral.testing import FakeOidcProvider

with FakeOidcProvider(client_id="corral-portal", claims={"groups": ["sre"]}) as idp:
    settings = idp.settings()  # an OidcSettings for CORRAL_IDENTITY__OIDC
```
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

from corral.settings import OidcSettings
from corral.testing._http import ThreadedHTTPServer

__all__ = ["FakeOidcProvider"]


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None


class FakeOidcProvider(ThreadedHTTPServer):
    """An OIDC issuer that signs in one configured user without asking.

    Args:
        client_id: The only client it knows (the ID token's ``aud``).
        client_secret: If set, ``/token`` requires it with HTTP Basic auth.
        user: The ``sub`` of every ID token.
        claims: Extra or overriding ID token claims (a ``None`` value removes a claim), e.g.
            ``{"groups": ["sre"]}``, ``{"aud": "another-client"}`` or ``{"nonce": "replayed"}``.

    Attributes:
        error: When set, ``/authorize`` redirects back with ``error=<this>`` instead of a code.
        authorize_requests: The query of every ``/authorize`` request.
        token_requests: The form of every ``/token`` request.
        token_errors: The ``error`` of every refused ``/token`` request (``invalid_grant``...).
        logout_requests: The query of every ``/logout`` request (RP-Initiated Logout 1.0).
    """

    def __init__(
        self,
        *,
        client_id: str = "corral-portal",
        client_secret: str | None = None,
        user: str = "alice",
        claims: dict[str, Any] | None = None,
    ) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        super().__init__(thread_name="fake-oidc-provider")
        self.client_id = client_id
        self.client_secret = client_secret
        self.user = user
        self.claims: dict[str, Any] = dict(claims or {})
        self.error: str | None = None
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.token_errors: list[str] = []
        self.logout_requests: list[dict[str, str]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:<port>``: the ``iss`` of its tokens."""
        return self._url

    def settings(self, **overrides: Any) -> OidcSettings:
        """OIDC settings pointing at this provider (endpoints by discovery), with ``overrides``."""
        values: dict[str, Any] = {
            "issuer": self.issuer,
            "audience": self.client_id,
            "jwks_url": f"{self.issuer}/jwks",
            "groups_claim": "groups",
        }
        values.update(overrides)
        return OidcSettings(**values)

    def discovery(self) -> dict[str, Any]:
        """The ``/.well-known/openid-configuration`` document."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "end_session_endpoint": f"{self.issuer}/logout",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        """The public signing key as a JWK set (RFC 7517), ``kid`` ``fake-1``."""
        from jwt.algorithms import RSAAlgorithm

        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": "fake-1", "use": "sig", "alg": "RS256"}]}

    def id_token(self, *, nonce: str | None) -> str:
        """A signed ID token for :attr:`user` with ``nonce`` and :attr:`claims`."""
        import jwt

        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": self.user,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
        }
        claims.update(self.claims)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "fake-1"})

    def authorize(self, query: dict[str, str]) -> str:
        """Where ``/authorize`` redirects for ``query``: ``redirect_uri`` with a code or error."""
        with self._lock:
            self.authorize_requests.append(query)
        redirect_uri = query.get("redirect_uri", "")
        if self.error is not None:
            reply = {"error": self.error, "error_description": "refused by the fake provider"}
        else:
            code = secrets.token_urlsafe(16)
            with self._lock:
                self._grants[code] = _Grant(
                    query.get("client_id", ""),
                    redirect_uri,
                    query.get("code_challenge", ""),
                    query.get("code_challenge_method", ""),
                    query.get("nonce"),
                )
            reply = {"code": code}
        reply["state"] = query.get("state", "")
        separator = "&" if "?" in redirect_uri else "?"
        return f"{redirect_uri}{separator}{urlencode(reply)}"

    def logout(self, query: dict[str, str]) -> str | None:
        """Where ``/logout`` redirects for ``query``: its ``post_logout_redirect_uri``, if any."""
        with self._lock:
            self.logout_requests.append(query)
        return query.get("post_logout_redirect_uri")

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """``/token``'s status and body for ``form`` and the ``Authorization`` header."""
        with self._lock:
            self.token_requests.append(form)
            grant = self._grants.pop(form.get("code", ""), None)
        error = self._refusal(form, authorization, grant)
        if error is not None:
            with self._lock:
                self.token_errors.append(error)
            status = 401 if error == "invalid_client" else 400
            return status, {"error": error}
        assert grant is not None
        return 200, {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": self.id_token(nonce=grant.nonce),
        }

    def _refusal(
        self, form: dict[str, str], authorization: str | None, grant: _Grant | None
    ) -> str | None:
        if self.client_secret is not None:
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}"
            expected = base64.b64encode(pair.encode()).decode()
            if not hmac.compare_digest(authorization or "", f"Basic {expected}"):
                return "invalid_client"
        if form.get("grant_type") != "authorization_code" or grant is None:
            return "invalid_grant"
        if grant.client_id != self.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return "invalid_grant"
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        if grant.code_challenge_method != "S256" or not hmac.compare_digest(
            challenge, grant.code_challenge
        ):
            return "invalid_grant"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read the recorded requests instead."""

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif url.path == "/jwks":
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    self.send_response(302)
                    self.send_header("Location", provider.authorize(dict(parse_qsl(url.query))))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/logout":
                    back = provider.logout(dict(parse_qsl(url.query)))
                    if back is None:
                        self._json(200, {"signed_out": True})
                        return
                    self.send_response(302)
                    self.send_header("Location", back)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": f"no route {url.path}"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if urlsplit(self.path).path != "/token":
                    self._json(404, {"error": f"no route {self.path}"})
                    return
                self._json(*provider.token(form, self.headers.get("Authorization")))

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
