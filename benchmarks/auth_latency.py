"""Authentication + authorization cost per request: API key and OIDC JWT, next to public routes.

One process, one app (``corral.api.create_app``, SQLite store in a temp home, no worker), one
run. Requests go through ``httpx.ASGITransport``: the whole ASGI stack (size-limit middleware,
routing, dependencies, the error mapping) without sockets. Variants, measured round-robin (one
call of each in turn, ``--requests`` times, after a warm-up) so that the noise of a shared
machine falls on all of them alike:

* ``GET /bench/noop`` (public): a route added for this benchmark that declares
  ``requires(PUBLIC)`` and returns a constant: the floor of the ASGI stack.
* ``GET /healthz`` (public): the shipped health route; it also opens a store session.
* ``GET /v1/whoami`` with an API key (``crl_...``; role ``viewer``): authentication (key row
  cached per ``identity.cache_seconds``, HMAC-SHA256 digest compared in constant time), the
  tenant's status (cached), the per-principal rate limit (``limits``, memory storage) and the
  ``identity.read`` permission check.
* ``GET /v1/whoami`` with a JWT (RS256, and ES256): signature, ``iss``/``aud``/``exp``/``nbf``
  verified by PyJWT against a JWKS served by a local HTTP server and cached after the first
  call; the user's role grants (cached); the ``identity.login`` audit (once per token).
* Direct calls, outside FastAPI: ``platform.identity.authenticate("Bearer ...")`` followed by
  ``principal.can("identity.read")``: the cost of authentication and authorization alone; and
  ``ApiRateLimiter.hit(principal)``, which the API adds per request.
* ``API key, cache miss``: ``authenticate`` after ``identity.invalidate_key``: the key row read
  from the store (what one request in ``identity.cache_seconds`` per key pays).

Cold (reported apart, ``--cold`` times): the first JWT verification of a fresh ``Identity``,
which fetches the JWKS over HTTP.

Latency is ``time.perf_counter_ns()`` around each call; p50 and p99 over the calls.

Run: ``python benchmarks/auth_latency.py [--requests 3000] [--cold 20] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform as host
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from corral.api import create_app
from corral.api._deps import ApiRateLimiter, requires
from corral.platform import Platform
from corral.settings import IdentitySettings, OidcSettings, Settings
from corral.tenancy import PUBLIC, Identity, Principal, grant_role, issue_key

ISSUER = "https://login.bench.test"
AUDIENCE = "corral-bench"
UNLIMITED = "1000000000/minute"


@dataclass
class Row:
    """One variant's samples, in nanoseconds."""

    name: str
    samples: list[int] = field(default_factory=list)

    def p(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) / 1e6


@contextlib.contextmanager
def jwks_server(keys: dict[str, Any]) -> Iterator[str]:
    """Serve ``{"keys": [...]}`` at ``/jwks.json`` on a free local port."""
    body = json.dumps({"keys": list(keys.values())}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
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
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Issuer:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls) -> Issuer:
        return cls(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec.generate_private_key(ec.SECP256R1()),
        )

    def jwks(self) -> dict[str, Any]:
        return {
            "rsa-1": {
                **RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True),
                "kid": "rsa-1",
                "alg": "RS256",
            },
            "ec-1": {
                **ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True),
                "kid": "ec-1",
                "alg": "ES256",
            },
        }

    def token(self, algorithm: str, sub: str = "bench") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 7200}
        key: Any = self.rsa_key if algorithm == "RS256" else self.ec_key
        kid = "rsa-1" if algorithm == "RS256" else "ec-1"
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def settings_for(home: Path, jwks_url: str) -> Settings:
    oidc = OidcSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, algorithms=["RS256", "ES256"]
    )
    return Settings(
        home=home,
        identity=IdentitySettings(oidc=oidc, api_rate_limit=UNLIMITED),
        mcp_endpoint={"enabled": False},
    )


Call = Callable[[], Awaitable[None]]


async def measure(variants: dict[str, Call], requests: int, warmup: int) -> list[Row]:
    """Run every variant round-robin; ``warmup`` rounds are not recorded."""
    rows = {name: Row(name) for name in variants}
    clock = time.perf_counter_ns
    gc.collect()
    for round_ in range(warmup + requests):
        for name, call in variants.items():
            start = clock()
            await call()
            elapsed = clock() - start
            if round_ >= warmup:
                rows[name].samples.append(elapsed)
    return list(rows.values())


def http_call(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Call:
    async def call() -> None:
        response = await client.get(url, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"GET {url}: {response.status_code} {response.text}")

    return call


def direct_call(identity: Identity, header: str, *, miss_key: str | None = None) -> Call:
    async def call() -> None:
        if miss_key is not None:
            identity.invalidate_key(miss_key)
        principal = await identity.authenticate(header)
        if not principal.can("identity.read"):
            raise SystemExit("the benchmark principal lacks identity.read")

    return call


async def cold_jwt(settings: Settings, platform: Platform, token: str, times: int) -> Row:
    """First verification by a fresh ``Identity``: the JWKS fetch included."""
    row = Row("authenticate, JWT RS256, cold (JWKS fetch, grants, login audit)")
    for _ in range(times):
        fresh = Identity(platform.store, settings.identity, home=settings.home)
        start = time.perf_counter_ns()
        await fresh.authenticate(f"Bearer {token}")
        row.samples.append(time.perf_counter_ns() - start)
    return row


async def setup(platform: Platform) -> tuple[str, str]:
    """An API key (viewer) and a role grant for ``user:bench``; returns (key, key id)."""
    key = await issue_key(
        platform.store,
        server_secret=platform.identity.server_secret,
        tenant_id="default",
        principal="service:bench",
        roles=["viewer"],
        name="bench",
        kind="service",
    )
    admin = Principal(
        id="user:bench-admin", tenant_id="default", roles=frozenset({"admin"}), kind="user"
    )
    await grant_role(platform.store, admin, subject="user:bench", role="viewer")
    return key, key.split("_")[1]


async def run(args: argparse.Namespace) -> tuple[list[Row], Row]:
    issuer = Issuer.new()
    with tempfile.TemporaryDirectory() as tmp, jwks_server(issuer.jwks()) as jwks_url:
        settings = settings_for(Path(tmp), jwks_url)
        if args.store_url:
            settings = settings.model_copy(
                update={"store": settings.store.model_copy(update={"url": args.store_url})}
            )
        platform = Platform(settings)
        app = create_app(platform, run_worker=False)

        @app.get("/bench/noop", include_in_schema=False)
        async def noop(_public: Annotated[None, requires(PUBLIC)]) -> dict[str, str]:
            return {"status": "ok"}

        async with app.router.lifespan_context(app):
            key, key_id = await setup(platform)
            rs256, es256 = issuer.token("RS256"), issuer.token("ES256")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                limiter = ApiRateLimiter(UNLIMITED, None)
                principal = await platform.identity.authenticate(f"Bearer {key}")

                async def limiter_hit() -> None:
                    await limiter.hit(principal)

                variants: dict[str, Call] = {
                    "GET /bench/noop (public)": http_call(client, "/bench/noop", {}),
                    "GET /healthz (public)": http_call(client, "/healthz", {}),
                    "GET /v1/whoami, API key": http_call(
                        client, "/v1/whoami", {"Authorization": f"Bearer {key}"}
                    ),
                    "GET /v1/whoami, JWT RS256": http_call(
                        client, "/v1/whoami", {"Authorization": f"Bearer {rs256}"}
                    ),
                    "GET /v1/whoami, JWT ES256": http_call(
                        client, "/v1/whoami", {"Authorization": f"Bearer {es256}"}
                    ),
                    "authenticate + can, API key": direct_call(platform.identity, f"Bearer {key}"),
                    "authenticate + can, JWT RS256": direct_call(
                        platform.identity, f"Bearer {rs256}"
                    ),
                    "authenticate + can, JWT ES256": direct_call(
                        platform.identity, f"Bearer {es256}"
                    ),
                    "API rate limiter hit": limiter_hit,
                    "authenticate + can, API key, cache miss": direct_call(
                        platform.identity, f"Bearer {key}", miss_key=key_id
                    ),
                }
                rows = await measure(variants, args.requests, args.warmup)
            cold = await cold_jwt(settings, platform, rs256, args.cold)
    return rows, cold


def print_table(rows: list[Row], cold: Row) -> None:
    base = next(r for r in rows if r.name.startswith("GET /healthz")).p50
    floor = next(r for r in rows if r.name.startswith("GET /bench/noop")).p50
    print("| variant | calls | p50 ms | p99 ms | p50 / healthz | p50 / noop |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in [*rows, cold]:
        print(
            f"| {row.name} | {len(row.samples)} | {row.p50:.3f} | {row.p(0.99):.3f} "
            f"| {row.p50 / base:.2f} | {row.p50 / floor:.2f} |"
        )
    by_name = {r.name: r.p50 for r in rows}
    print()
    for kind in ("API key", "JWT RS256", "JWT ES256"):
        added = by_name[f"GET /v1/whoami, {kind}"] - by_name["GET /bench/noop (public)"]
        print(
            f"- {kind}: auth + RBAC alone p50 {by_name[f'authenticate + can, {kind}']:.3f} ms; "
            f"whoami over the public floor +{added:.3f} ms p50"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured calls per variant")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded rounds first")
    parser.add_argument("--cold", type=int, default=20, help="cold JWT verifications")
    parser.add_argument("--store-url", help="SQLAlchemy async URL (default: SQLite in a temp dir)")
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args()
    versions = {p: importlib.metadata.version(p) for p in ("fastapi", "pyjwt", "cryptography")}
    print(
        f"python {host.python_version()}, {versions}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        file=sys.stderr,
    )
    rows, cold = asyncio.run(run(args))
    print_table(rows, cold)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({r.name: r.samples for r in [*rows, cold]}, out)


if __name__ == "__main__":
    main()
