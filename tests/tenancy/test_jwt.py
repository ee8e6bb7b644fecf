"""OIDC tokens: JWTs verified against a real JWKS endpoint; every forged token is a 401.

The issuer is a real HTTP server on a local port publishing an RSA and an EC key (RFC 7517);
tokens are signed with ``cryptography`` keys through PyJWT, and the hostile ones are built by
hand where PyJWT refuses to make them (``alg: none``, HS256 keyed with the public key's PEM).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from corral.settings import OidcSettings, Settings
from tenancy._world import World, live_world

ISSUER = "https://login.example.test"
AUDIENCE = "corral-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class Issuer:
    """An OIDC issuer: signing keys and their JWKS served over HTTP on a local port."""

    url: str = ""
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    jwks_requests: int = 0

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        ec_jwk = ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
            ]
        }

    def claims(self, sub: str = "alice", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now - 5,
            "exp": now + 600,
            "jti": f"{sub}-{time.monotonic_ns()}",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        sub: str = "alice",
        *,
        key: Any = None,
        kid: str | None = "rsa-1",
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with ``key`` (default: the issuer's RSA key)."""
        return jwt.encode(
            self.claims(sub, **claims),
            key if key is not None else self.rsa_key,
            algorithm=algorithm,
            headers={**({"kid": kid} if kid else {}), **(headers or {})},
        )

    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    """A live JWKS endpoint (``/jwks.json``) on 127.0.0.1, counting its requests."""
    state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            state.jwks_requests += 1
            body = json.dumps(state.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def settings(settings: Settings, issuer: Issuer) -> Settings:
    """The shared settings with OIDC pointed at the local issuer."""
    oidc = OidcSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=issuer.url, algorithms=["RS256", "ES256"]
    )
    return settings.model_copy(
        update={"identity": settings.identity.model_copy(update={"oidc": oidc})}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def grant(world: World, subject: str, role: str, tenant: str = "default") -> None:
    response = await world.as_(
        "POST", "/v1/role-grants", tenant=tenant, json={"subject": subject, "role": role}
    )
    assert response.status_code == 201, response.text


async def test_a_valid_token_of_a_granted_user_and_of_a_granted_group(
    settings: Settings, issuer: Issuer
) -> None:
    async with live_world(settings) as world:
        await grant(world, "user:alice", "builder")
        await grant(world, "group:sre", "operator")

        me = await world.client.get("/v1/whoami", headers=bearer(issuer.token("alice")))
        assert me.status_code == 200, me.text
        assert me.json() == {
            "principal": "user:alice",
            "kind": "user",
            "tenant_id": "default",
            "roles": ["builder"],
            "groups": [],
            "agent": None,
            "accountable": "user:alice",  # an OIDC user is their own accountable human
        }
        # bob holds nothing himself; his group does.
        bob = issuer.token("bob", groups=["sre", "unrelated"])
        me = await world.client.get("/v1/whoami", headers=bearer(bob))
        assert me.status_code == 200, me.text
        assert (me.json()["roles"], me.json()["groups"]) == (["operator"], ["sre", "unrelated"])
        # The EC key works too (ES256), and the roles carry to the routes' permissions.
        carol_ec = issuer.token("alice", key=issuer.ec_key, kid="ec-1", algorithm="ES256")
        assert (await world.client.get("/v1/agents", headers=bearer(carol_ec))).status_code == 200
        denied = await world.client.get("/v1/keys", headers=bearer(carol_ec))
        assert denied.status_code == 403 and "keys.manage" in denied.json()["message"]
        # The JWKS was fetched once and cached for all of these.
        assert issuer.jwks_requests == 1


def _alg_none(issuer: Issuer, alg: str) -> str:
    header = _segment({"alg": alg, "typ": "JWT", "kid": "rsa-1"})
    return f"{header}.{_segment(issuer.claims('alice'))}."


def _hs256_with_public_pem(issuer: Issuer) -> str:
    """RFC 8725 section 2.1: an HMAC "signature" keyed with the RSA public key's PEM."""
    header = _segment({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    signing_input = f"{header}.{_segment(issuer.claims('alice'))}"
    mac = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _tampered(issuer: Issuer) -> str:
    """A genuine token whose payload was swapped for another user's, signature kept."""
    header, _, signature = issuer.token("alice").split(".")
    return f"{header}.{_segment(issuer.claims('root'))}.{signature}"


def attacks(issuer: Issuer) -> dict[str, str | None]:
    """Name -> the Authorization header value of each hostile request (None: no header)."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger_jwk = RSAAlgorithm.to_jwk(stranger.public_key(), as_dict=True)
    now = int(time.time())
    tokens: dict[str, str | None] = {
        "missing": None,
        "empty bearer": "Bearer ",
        "wrong scheme": f"Basic {issuer.token('alice')}",
        "malformed: one segment": "Bearer not-a-jwt",
        "malformed: garbage segments": "Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl",
        "malformed: header not json": f"Bearer {_b64(b'{nope')}.{_b64(b'{}')}.c2ln",
        "expired": bearer_value(issuer.token("alice", exp=now - 3600, nbf=now - 7200)),
        "nbf in the future": bearer_value(issuer.token("alice", nbf=now + 3600)),
        "no exp": bearer_value(issuer.token("alice", exp=None)),
        "wrong audience": bearer_value(issuer.token("alice", aud="another-api")),
        "wrong issuer": bearer_value(issuer.token("alice", iss="https://evil.example")),
        "alg none": bearer_value(_alg_none(issuer, "none")),
        "alg None": bearer_value(_alg_none(issuer, "None")),
        "alg NONE": bearer_value(_alg_none(issuer, "NONE")),
        "another key, same kid": bearer_value(issuer.token("alice", key=stranger, kid="rsa-1")),
        "another key, embedded jwk": bearer_value(
            issuer.token("alice", key=stranger, kid="rsa-1", headers={"jwk": stranger_jwk})
        ),
        "another key, jku": bearer_value(
            issuer.token(
                "alice", key=stranger, kid="rsa-1", headers={"jku": "http://127.0.0.1:1/x"}
            )
        ),
        "HS256 keyed with the public PEM": bearer_value(_hs256_with_public_pem(issuer)),
        "unknown kid": bearer_value(issuer.token("alice", key=stranger, kid="rotated-away")),
        "no kid, two keys published": bearer_value(issuer.token("alice", kid=None)),
        "RSA key named as the EC kid": bearer_value(issuer.token("alice", kid="ec-1")),
        "algorithm outside the allowlist": bearer_value(issuer.token("alice", algorithm="RS512")),
        "payload swapped": bearer_value(_tampered(issuer)),
    }
    return tokens


def bearer_value(token: str) -> str:
    return f"Bearer {token}"


def _pieces(header: str | None) -> list[str]:
    """The token and each of its dot-separated parts long enough to be recognisable."""
    if header is None:
        return []
    token = header.partition(" ")[2]
    return [p for p in (token, *token.split(".")) if len(p) >= 8]


async def test_every_forged_or_invalid_token_is_401_without_echoing_it(
    settings: Settings, issuer: Issuer
) -> None:
    async with live_world(settings) as world:
        await grant(world, "user:alice", "admin")
        await grant(world, "user:root", "admin")
        failures = []
        for name, header in attacks(issuer).items():
            headers = {} if header is None else {"Authorization": header}
            response = await world.client.get("/v1/whoami", headers=headers)
            body = response.json()
            leaked = [p for p in _pieces(header) if p in response.text]
            if response.status_code != 401 or leaked or not body.get("message"):
                failures.append((name, response.status_code, body, leaked))
            elif not response.headers.get("WWW-Authenticate", "").startswith("Bearer"):
                failures.append((name, "no WWW-Authenticate", response.headers))
        assert failures == []
        # Nobody logged in, and the real tokens still work afterwards.
        events = (await world.as_("GET", "/v1/audit/events", params={"limit": 1000})).json()
        assert [e for e in events["items"] if e["action"] == "identity.login"] == []
        ok = await world.client.get("/v1/whoami", headers=bearer(issuer.token("alice")))
        assert ok.status_code == 200, ok.text


async def test_specific_reasons_are_given(settings: Settings, issuer: Issuer) -> None:
    """The 401s say what is wrong (expired, audience, issuer, algorithm), not just 'no'."""
    async with live_world(settings) as world:
        await grant(world, "user:alice", "viewer")
        now = int(time.time())
        expected = {
            "expired": issuer.token("alice", exp=now - 3600, nbf=now - 7200),
            "nbf": issuer.token("alice", nbf=now + 3600),
            "audience": issuer.token("alice", aud="another-api"),
            "issuer": issuer.token("alice", iss="https://evil.example"),
            "not accepted": _alg_none(issuer, "none"),
            "kid": issuer.token("alice", kid="rotated-away"),
        }
        for fragment, token in expected.items():
            response = await world.client.get("/v1/whoami", headers=bearer(token))
            assert response.status_code == 401
            assert fragment in response.json()["message"], (fragment, response.json())


async def test_a_valid_token_without_any_grant_is_403(settings: Settings, issuer: Issuer) -> None:
    async with live_world(settings) as world:
        await grant(world, "user:alice", "viewer")
        token = issuer.token("mallory", groups=["not-granted"])
        response = await world.client.get("/v1/whoami", headers=bearer(token))
        assert response.status_code == 403
        assert "user:mallory has no role in tenant 'default'" in response.json()["message"]
        assert token not in response.text
        # Acting in another tenant where alice holds nothing is a 403 too, naming no B data.
        await world.tenant("team-b")
        await grant(world, "user:bob", "admin", tenant="team-b")
        other = await world.client.get(
            "/v1/runs", headers={**bearer(issuer.token("alice")), "X-Corral-Tenant": "team-b"}
        )
        assert other.status_code == 403, other.text
        assert "bob" not in other.text
        # A grant made in team-b gives a role there only.
        bob = issuer.token("bob")
        there = await world.client.get(
            "/v1/whoami", headers={**bearer(bob), "X-Corral-Tenant": "team-b"}
        )
        assert (there.status_code, there.json()["roles"]) == (200, ["admin"])
        here = await world.client.get("/v1/whoami", headers=bearer(bob))
        assert here.status_code == 403
        # Naming the system scope, or garbage, as the tenant is refused, never a crash.
        for tenant in ("*", "team-b' OR '1'='1", "a" * 300, " "):
            odd = await world.client.get(
                "/v1/whoami", headers={**bearer(bob), "X-Corral-Tenant": tenant}
            )
            assert odd.status_code in (400, 403), (tenant, odd.status_code, odd.text)


async def test_a_revoked_grant_stops_working(settings: Settings, issuer: Issuer) -> None:
    async with live_world(settings) as world:
        await grant(world, "user:alice", "viewer")
        token = issuer.token("alice")
        assert (await world.client.get("/v1/whoami", headers=bearer(token))).status_code == 200
        revoked = await world.as_(
            "POST", "/v1/role-grants/revoke", json={"subject": "user:alice", "role": "viewer"}
        )
        assert revoked.status_code == 204, revoked.text
        assert (await world.client.get("/v1/whoami", headers=bearer(token))).status_code == 403


async def test_one_login_event_per_token_with_the_user_as_actor(
    settings: Settings, issuer: Issuer
) -> None:
    async with live_world(settings) as world:
        await grant(world, "user:alice", "viewer")
        first, second = issuer.token("alice"), issuer.token("alice")
        assert first != second
        for token in (first, first, first, second, second):
            response = await world.client.get("/v1/whoami", headers=bearer(token))
            assert response.status_code == 200, response.text
        events = (await world.as_("GET", "/v1/audit/events", params={"limit": 1000})).json()
        logins = [e for e in events["items"] if e["action"] == "identity.login"]
        assert [(e["actor"], e["subject"], e["outcome"]) for e in logins] == [
            ("user:alice", "user:alice", "success"),
            ("user:alice", "user:alice", "success"),
        ]
        # The audit log never holds the token itself.
        assert all(t not in json.dumps(events) for t in (first, second))
        for piece in (first.split(".")[2], second.split(".")[2]):
            assert piece not in json.dumps(events)


async def test_the_tenant_claim_pins_the_tenant(settings: Settings, issuer: Issuer) -> None:
    assert settings.identity.oidc is not None
    oidc = settings.identity.oidc.model_copy(update={"tenant_claim": "corral_tenant"})
    pinned = settings.model_copy(
        update={"identity": settings.identity.model_copy(update={"oidc": oidc})}
    )
    async with live_world(pinned) as world:
        await world.tenant("team-b")
        await grant(world, "user:alice", "viewer")
        await grant(world, "user:alice", "admin", tenant="team-b")
        token = issuer.token("alice", corral_tenant="default")
        me = await world.client.get("/v1/whoami", headers=bearer(token))
        assert (me.status_code, me.json()["roles"]) == (200, ["viewer"])
        # The header cannot move a pinned token into team-b, where alice is an admin.
        moved = await world.client.get(
            "/v1/whoami", headers={**bearer(token), "X-Corral-Tenant": "team-b"}
        )
        assert moved.status_code == 403, moved.text
        unpinned = await world.client.get("/v1/whoami", headers=bearer(issuer.token("alice")))
        assert unpinned.status_code == 401 and "corral_tenant" in unpinned.json()["message"]
