"""Authentication: API keys and OIDC JWTs to a :class:`Principal` in a tenant.

API keys (``crl_<key_id>_<secret>``) are looked up by ``key_id`` and verified by comparing the
HMAC-SHA256 digest in constant time (:func:`hmac.compare_digest`). JWTs are verified with PyJWT
against the issuer's JWKS: signature, ``iss``, ``aud``, ``exp``, ``nbf`` and an algorithm
allowlist (RFC 8725 section 3.1: never ``none``, never an HMAC algorithm with a public key).
Lookups are cached for ``identity.cache_seconds``; revocation and suspension through this process
invalidate the cache at once. A lookup that was already reading the store when an invalidation
came is not cached (it may have read the row as it was before), so a key revoked through this
process stops working with the next request, even one racing the revocation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from corral._files import write_private_file
from corral.errors import Forbidden, Unauthorized
from corral.settings import IdentitySettings, OidcSettings
from corral.store import SYSTEM, Store, utcnow
from corral.tenancy._keys import KEY_PREFIX, key_digest, parse_key
from corral.tenancy._principal import Principal
from corral.tenancy._roles import PLATFORM_ADMIN
from corral.tenancy._tables import ApiKeyRow, RoleGrantRow, TenantRow

__all__ = ["Identity", "load_or_create_secret"]

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


def load_or_create_secret(path: Path, *, size: int = 32) -> bytes:
    """The secret in ``path`` (base64); created with ``size`` random bytes, mode 0600, if absent."""
    if not path.exists():
        value = base64.b64encode(secrets.token_bytes(size)).decode()
        write_private_file(path, value + "\n", replace=False)  # a racing process's key wins
    return base64.b64decode(path.read_text().strip())


@dataclass(frozen=True)
class _Key:
    row: Any
    fetched: float


@dataclass(frozen=True)
class _Tenant:
    status: str
    reason: str | None
    fetched: float


class Identity:
    """Turns credentials into principals.

    Args:
        store: Where keys, grants and tenants live.
        settings: The ``identity`` settings group.
        home: Data directory (for the generated HMAC secret).
    """

    def __init__(self, store: Store, settings: IdentitySettings, *, home: Path) -> None:
        self.store = store
        self.settings = settings
        if settings.server_secret is not None:
            self.server_secret = base64.b64decode(settings.server_secret.get_secret_value())
        else:
            self.server_secret = load_or_create_secret(home / "identity.key")
        if len(self.server_secret) < 32:
            raise ValueError(
                "identity.server_secret must be at least 32 bytes (base64); generate one with "
                "`python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'`"
            )
        self._keys: dict[str, _Key] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._grants: dict[tuple[str, tuple[str, ...]], tuple[float, frozenset[str]]] = {}
        self._jwt = _JwtVerifier(settings.oidc) if settings.oidc is not None else None
        self.logins_seen: set[str] = set()
        # Bumped by every invalidation: a lookup caches what it read only if none came while
        # it was reading (it may have read a row an invalidation was about).
        self._generation = 0

    def invalidate_key(self, key_id: str) -> None:
        """Forget a cached key (it was revoked through this process)."""
        self._generation += 1
        self._keys.pop(key_id, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        """Forget a tenant's cached status and role grants."""
        self._generation += 1
        self._tenants.pop(tenant_id, None)
        self._grants = {k: v for k, v in self._grants.items() if k[0] != tenant_id}

    async def authenticate(
        self, authorization: str | None, *, tenant: str | None = None
    ) -> Principal:
        """The principal behind an ``Authorization: Bearer <token>`` header value.

        Args:
            authorization: The header value, or ``None``.
            tenant: The tenant asked for (``X-Corral-Tenant``); API keys act in their own
                tenant (platform admins may name another), users in this one.

        Raises:
            Unauthorized: no header, a malformed one, an unknown, revoked or expired key, a
                token that fails verification.
            Forbidden: the tenant is suspended, or the user has no role in it.
        """
        if not authorization:
            raise Unauthorized(
                "This request needs credentials: send `Authorization: Bearer <API key or token>`"
                " (create a key with `corral keys create`)."
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("The Authorization header must be `Bearer <API key or token>`.")
        if token.startswith(KEY_PREFIX):
            principal = await self._from_key(token, tenant)
        else:
            principal = await self._from_jwt(token, tenant)
        await self.check_tenant(principal.tenant_id)
        return principal

    async def check_tenant(self, tenant_id: str) -> None:
        """Raise :class:`Forbidden` if ``tenant_id`` is suspended (or does not exist)."""
        cached = self._tenants.get(tenant_id)
        now = time.monotonic()
        if cached is None or now - cached.fetched >= self.settings.cache_seconds:
            generation = self._generation
            async with self.store.read(SYSTEM) as session:
                row = await session.get(TenantRow, tenant_id)
            cached = _Tenant(row.status, row.suspended_reason, now) if row else None
            if cached is not None and generation == self._generation:
                self._tenants[tenant_id] = cached
        if cached is None:
            raise Forbidden(f"You have no access to tenant {tenant_id!r}.")
        if cached.status != "active":
            raise Forbidden(
                f"Tenant {tenant_id!r} is suspended: {cached.reason or 'no reason given'}. "
                "A platform admin can resume it with `corral tenants resume`.",
                code="tenant_suspended",
            )

    async def _from_key(self, token: str, tenant: str | None) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthorized("Malformed API key: expected `crl_<key id>_<secret>`.")
        key_id, secret = parsed
        row = await self._key_row(key_id)
        digest = key_digest(self.server_secret, key_id, secret)
        # Compare even when the key is unknown, so timing does not reveal which ids exist.
        if not hmac.compare_digest(digest, row.digest if row is not None else "0" * 64):
            raise Unauthorized("Invalid API key.")
        assert row is not None
        return self._key_principal(row, key_id, tenant)

    async def authenticate_key_id(self, key_id: str) -> Principal:
        """The principal of API key ``key_id``, re-checked as :meth:`authenticate` checks a key.

        For a session the key already opened (the portal's signed cookie names the key id, not
        the secret): the key must still exist, be unrevoked and unexpired, and its tenant active.

        Raises:
            Unauthorized: an unknown, revoked or expired key.
            Forbidden: the key's tenant is suspended.
        """
        row = await self._key_row(key_id)
        if row is None:
            raise Unauthorized(f"API key {key_id} no longer exists; log in again.")
        principal = self._key_principal(row, key_id, None)
        await self.check_tenant(principal.tenant_id)
        return principal

    def _key_principal(self, row: Any, key_id: str, tenant: str | None) -> Principal:
        if row.revoked_at is not None:
            raise Unauthorized(f"API key {key_id} was revoked; create a new one.")
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise Unauthorized(f"API key {key_id} expired at {row.expires_at.isoformat()}.")
        roles = frozenset(row.roles)
        acting_in = row.tenant_id
        if tenant and tenant != row.tenant_id:
            if PLATFORM_ADMIN not in roles:
                raise Forbidden(
                    f"API key {key_id} belongs to another tenant than {tenant!r}; use a key of "
                    "that tenant."
                )
            acting_in = tenant
        return Principal(
            id=row.principal,
            tenant_id=acting_in,
            roles=roles if acting_in == row.tenant_id else frozenset({PLATFORM_ADMIN}),
            kind=row.kind,
            agent=row.agent_name,
            key_id=key_id,
            accountable=row.accountable,
        )

    async def _key_row(self, key_id: str) -> Any:
        cached = self._keys.get(key_id)
        now = time.monotonic()
        if cached is not None and now - cached.fetched < self.settings.cache_seconds:
            return cached.row
        generation = self._generation
        async with self.store.read(SYSTEM) as session:
            row = (
                await session.execute(select(ApiKeyRow.__table__).where(ApiKeyRow.id == key_id))
            ).first()
        if row is not None and generation == self._generation:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key_id] = _Key(row, now)
        return row

    async def _from_jwt(self, token: str, tenant: str | None) -> Principal:
        if self._jwt is None:
            raise Unauthorized(
                "Unknown credential: not an API key (`crl_...`), and OIDC is not configured "
                "(set CORRAL_IDENTITY__OIDC__ISSUER, __AUDIENCE and __JWKS_URL)."
            )
        claims = await self._jwt.verify(token)
        principal = await self._user_principal(claims, tenant)
        await self._audit_login(principal, token)
        return principal

    async def authenticate_id_token(self, id_token: str, *, nonce: str) -> Principal:
        """The principal behind an OIDC ID token the portal received from the token endpoint.

        Verified as a bearer token is (signature, ``iss``, ``exp``, ``nbf``), with ``aud`` the
        portal's client id (``identity.oidc.client_id``, default the audience) and the ``nonce``
        claim equal to ``nonce`` (OpenID Connect Core 1.0, section 3.1.3.7); the claims map to
        the principal exactly as a bearer token's do.

        Raises:
            Unauthorized: OIDC is not configured, or the token fails verification or carries
                another nonce.
            Forbidden: the tenant is suspended, or the user has no role in it.
        """
        if self._jwt is None:
            raise Unauthorized("OIDC is not configured; log in with an API key.")
        oidc = self._jwt.settings
        claims = await self._jwt.verify(id_token, audience=oidc.client_id or oidc.audience)
        claimed = claims.get("nonce")
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed, nonce):
            raise Unauthorized(
                "The ID token's nonce is not the one this sign-in sent (a replayed token?); "
                "sign in again."
            )
        principal = await self._user_principal(claims, None)
        await self._audit_login(principal, id_token)
        return principal

    async def authenticate_user(
        self, principal_id: str, *, tenant_id: str, groups: tuple[str, ...]
    ) -> Principal:
        """A user's principal re-checked for a session a verified token opened earlier.

        The tenant must still be active and the user (or one of ``groups``) still hold a role
        there; the roles are read again, so a revoked grant ends the user's sessions.

        Raises:
            Unauthorized: the user no longer holds a role in the tenant.
            Forbidden: the tenant is suspended.
        """
        await self.check_tenant(tenant_id)
        roles = await self.roles_of(tenant_id, principal_id, groups)
        if not roles:
            raise Unauthorized(f"{principal_id} no longer has a role in tenant {tenant_id!r}.")
        return Principal(
            id=principal_id, tenant_id=tenant_id, roles=roles, kind="user", groups=groups
        )

    async def _user_principal(self, claims: dict[str, Any], tenant: str | None) -> Principal:
        """Verified claims to a user principal: user, groups and tenant claims, role grants."""
        assert self._jwt is not None
        oidc = self._jwt.settings
        user = claims.get(oidc.user_claim)
        if not isinstance(user, str) or not user:
            raise Unauthorized(f"The token has no {oidc.user_claim!r} claim naming the user.")
        groups_claim = claims.get(oidc.groups_claim, [])
        groups = tuple(sorted(g for g in groups_claim if isinstance(g, str)))
        acting_in = tenant
        if oidc.tenant_claim is not None:
            claimed = claims.get(oidc.tenant_claim)
            if not isinstance(claimed, str):
                raise Unauthorized(f"The token has no {oidc.tenant_claim!r} claim.")
            if tenant and tenant != claimed:
                raise Forbidden(f"Your token is for tenant {claimed!r}, not {tenant!r}.")
            acting_in = claimed
        acting_in = acting_in or "default"
        principal_id = f"user:{user}"
        # An unknown tenant ("*", garbage) is a 403 here, before it is used as a store scope.
        await self.check_tenant(acting_in)
        roles = await self.roles_of(acting_in, principal_id, groups)
        if not roles:
            raise Forbidden(
                f"{principal_id} has no role in tenant {acting_in!r}; ask its admin for one "
                f"(`corral roles grant {principal_id} viewer`)."
            )
        return Principal(
            id=principal_id, tenant_id=acting_in, roles=roles, kind="user", groups=groups
        )

    async def roles_of(
        self, tenant_id: str, principal: str, groups: tuple[str, ...]
    ) -> frozenset[str]:
        """Roles granted in ``tenant_id`` to ``principal`` or any of its ``groups``."""
        subjects = (principal, *(f"group:{g}" for g in groups))
        key = (tenant_id, subjects)
        cached = self._grants.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.settings.cache_seconds:
            return cached[1]
        generation = self._generation
        async with self.store.read(tenant_id) as session:
            rows = await session.scalars(
                select(RoleGrantRow.role).where(
                    RoleGrantRow.tenant_id == tenant_id, RoleGrantRow.subject.in_(subjects)
                )
            )
            roles = frozenset(rows)
        if generation == self._generation:
            if len(self._grants) > 10_000:
                self._grants.clear()
            self._grants[key] = (now, roles)
        return roles

    async def _audit_login(self, principal: Principal, token: str) -> None:
        """``identity.login``: once per token and process (not once per request)."""
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        if fingerprint in self.logins_seen:
            return
        from corral.tenancy._service import audit_identity_event

        await audit_identity_event(
            self.store,
            principal.tenant_id,
            actor=principal.id,
            action="identity.login",
            subject=principal.id,
            details={"method": "oidc", "token_sha256": fingerprint[:16]},
        )
        if len(self.logins_seen) > 100_000:
            self.logins_seen.clear()
        self.logins_seen.add(fingerprint)


class _JwtVerifier:
    """Verifies JWTs against a JWKS fetched over HTTPS and cached."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        unsafe = {a.upper() for a in settings.algorithms} & (_HMAC_ALGORITHMS | {"NONE"})
        if unsafe:
            raise ValueError(
                f"identity.oidc.algorithms must not contain {sorted(unsafe)}: "
                "asymmetric algorithms only (RFC 8725 section 3.1)."
            )
        self._keys: dict[str, Any] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The token's claims once verified; ``aud`` must be ``audience`` (default: settings').

        Raises:
            Unauthorized: the token is malformed, expired, not yet valid, for another
                audience or issuer, or signed with an unknown key or refused algorithm.
        """
        import jwt  # with cryptography, about 10 MB: imported when OIDC is first used

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Malformed token: {exc}.") from None
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise Unauthorized(
                f"Token algorithm {str(algorithm)[:20]!r} is not accepted; accepted: "
                f"{', '.join(self.settings.algorithms)}."
            )
        key = await self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self.settings.algorithms),
                audience=audience or self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired; sign in again.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet (nbf).") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                f"The token's audience is not {audience or self.settings.audience!r}."
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"The token's issuer is not {self.settings.issuer!r}.") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token does not verify: {exc}.") from None
        except (TypeError, ValueError):
            # PyJWT raises TypeError when the kid names a key of another type than the
            # header's algorithm (an EC key for RS256): a forged token, not a server error.
            raise Unauthorized(
                f"The token's algorithm {algorithm!r} does not fit its signing key (kid)."
            ) from None
        return claims

    async def _key(self, kid: object) -> Any:
        now = time.monotonic()
        stale = now - self._fetched >= self.settings.jwks_cache_seconds
        unknown = not isinstance(kid, str) or kid not in self._keys
        if stale or (unknown and now - self._fetched >= 10.0):
            async with self._lock:
                await self._refresh()
        if not isinstance(kid, str) or kid not in self._keys:
            if len(self._keys) == 1 and kid is None:
                return next(iter(self._keys.values()))
            raise Unauthorized("The token's signing key (kid) is not one of the issuer's keys.")
        return self._keys[kid]

    async def _refresh(self) -> None:
        import httpx
        import jwt

        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.get(self.settings.jwks_url)
                response.raise_for_status()
                key_set = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise Unauthorized(
                f"Cannot fetch the issuer's signing keys from {self.settings.jwks_url}: {exc}"
            ) from None
        self._keys = {k.key_id: k.key for k in key_set.keys if k.key_id}
        if not self._keys and key_set.keys:
            self._keys = {"": key_set.keys[0].key}
        self._fetched = time.monotonic()
