"""Portal sign-in with OIDC (authorization code + PKCE) against a real HTTP provider.

The provider is :class:`corral.testing.FakeOidcProvider` on a local port; the portal runs in
process (httpx ``ASGITransport``) and calls the provider's token endpoint over HTTP. The test
plays the browser: it follows the portal's redirect to ``/authorize`` and the provider's redirect
back to the callback by hand. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from _portal_kit import csrf_of, login
from pydantic import SecretStr

from corral.api import create_app
from corral.platform import Platform
from corral.portal import _oidc
from corral.settings import Settings
from corral.tenancy import Principal, grant_role, issue_key, revoke_role
from corral.testing import FakeOidcProvider

CLIENT_ID = "corral-portal"
ADMIN = Principal(id="user:root", tenant_id="default", roles=frozenset({"admin"}), kind="user")
GRANTS = {"user:dave": "viewer", "group:sre": "admin"}
"""Dave reads; members of ``sre`` administer the tenant (its page needs ``keys.manage``)."""


@pytest.fixture
def idp() -> Iterator[FakeOidcProvider]:
    with FakeOidcProvider(client_id=CLIENT_ID, user="carol", claims={"groups": ["sre"]}) as idp:
        yield idp


@pytest.fixture
def settings(tmp_path: Path, settings: Settings, idp: FakeOidcProvider) -> Settings:
    identity = settings.identity.model_copy(update={"oidc": idp.settings()})
    return settings.model_copy(update={"identity": identity})


@dataclass
class Portal:
    platform: Platform
    app: object
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url="http://corral",
        )
        self.clients.append(client)
        return client


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    platform = Platform(settings)
    app = create_app(platform, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    for subject, role in GRANTS.items():
        await grant_role(platform.store, ADMIN, subject=subject, role=role)
    found = Portal(platform, app)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def authorize(client: httpx.AsyncClient) -> str:
    """Start a sign-in in ``client``; the provider's redirect back (the callback URL)."""
    start = await client.get("/ui/login/oidc")
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient(timeout=120) as browser:
        back = await browser.get(start.headers["location"])
    assert back.status_code == 302
    callback: str = back.headers["location"]
    assert callback.startswith("http://corral/ui/login/oidc/callback?")
    return callback


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


def refused(response: httpx.Response, client: httpx.AsyncClient, status: int, text: str) -> None:
    """The login page with ``text`` as its error, and no session."""
    assert response.status_code == status, response.text
    assert text in response.text, response.text
    assert 'action="/ui/login"' in response.text
    assert "corral_session" not in client.cookies


# --- the flow -------------------------------------------------------------------------------------


async def test_a_user_signs_in_and_gets_the_roles_of_their_groups(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    client = portal.client()
    login = await client.get("/ui/login")
    assert 'href="/ui/login/oidc"' in login.text and "Sign in with 127.0.0.1" in login.text

    start = await client.get("/ui/login/oidc")
    assert start.status_code == 302
    assert start.headers["location"].startswith(f"{idp.issuer}/authorize?")
    state_cookie = start.headers["set-cookie"]
    assert state_cookie.startswith("corral_oidc=")
    assert "HttpOnly" in state_cookie and "SameSite=lax" in state_cookie
    assert "Path=/ui/login/oidc" in state_cookie and "Max-Age=600" in state_cookie
    async with httpx.AsyncClient(timeout=120) as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    done = await client.get(callback)
    assert (done.status_code, done.headers["location"]) == (303, "/ui")
    assert "corral_oidc" not in client.cookies  # the state is spent

    (sent,) = idp.authorize_requests
    assert sent["response_type"] == "code" and sent["client_id"] == CLIENT_ID
    assert sent["redirect_uri"] == "http://corral/ui/login/oidc/callback"
    assert sent["scope"] == "openid profile email" and sent["code_challenge_method"] == "S256"
    assert sent["nonce"] and sent["state"] and sent["state"] != sent["nonce"]
    (redeemed,) = idp.token_requests
    verifier = redeemed["code_verifier"]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == sent["code_challenge"] and 43 <= len(verifier) <= 128
    assert redeemed["redirect_uri"] == sent["redirect_uri"] and idp.token_errors == []
    assert verifier not in start.headers["location"]

    overview = await client.get("/ui")
    assert overview.status_code == 200 and "user:carol" in overview.text
    assert (await client.get("/ui/tenancy")).status_code == 200  # admin through group:sre


async def test_signing_out_offers_the_providers_logout_to_an_oidc_user_only(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    client = portal.client()
    assert (await client.get(await authorize(client))).status_code == 303
    page = await client.get("/ui")
    out = await client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert (out.status_code, out.headers["location"]) == (303, "/ui/login?signed_out=oidc")
    signed_out = await client.get(out.headers["location"])
    link = re.search(r'href="([^"]*/logout\?[^"]*)"', signed_out.text)
    assert link is not None, signed_out.text
    url = html.unescape(link.group(1))
    assert url.startswith(f"{idp.issuer}/logout?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {
        "client_id": CLIENT_ID,
        "post_logout_redirect_uri": "http://corral/ui/login",
    }
    async with httpx.AsyncClient(timeout=120) as browser:
        back = await browser.get(url)
    assert (back.status_code, back.headers["location"]) == (302, "http://corral/ui/login")
    assert idp.logout_requests == [query]
    assert (await client.get("/ui")).headers["location"] == "/ui/login"  # Corral's ended too

    # A key's session signs out to the plain login page.
    keyed = portal.client()
    key = await issue_key(
        portal.platform.store,
        server_secret=portal.platform.identity.server_secret,
        tenant_id="default",
        principal="user:kim",
        roles=["viewer"],
        name="portal-kim",
    )
    assert (await login(keyed, key)).status_code == 303
    page = await keyed.get("/ui")
    out = await keyed.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.headers["location"] == "/ui/login"
    # An endpoint that is not http(s) (a hostile discovery document) is never linked.
    portal.platform.identity.settings.oidc = idp.settings(end_session_endpoint="javascript:x")
    assert "/logout?" not in (await keyed.get("/ui/login?signed_out=oidc")).text


async def test_a_viewer_signs_in_as_a_viewer(portal: Portal, idp: FakeOidcProvider) -> None:
    idp.user, idp.claims = "dave", {}
    client = portal.client()
    done = await client.get(await authorize(client))
    assert done.status_code == 303
    assert (await client.get("/ui/runs")).status_code == 200
    page = await client.get("/ui/tenancy")
    assert page.status_code == 403 and "keys.manage" in page.text


async def test_a_revoked_grant_ends_the_session(portal: Portal, idp: FakeOidcProvider) -> None:
    client = portal.client()
    assert (await client.get(await authorize(client))).status_code == 303
    assert (await client.get("/ui")).status_code == 200
    await revoke_role(portal.platform.store, ADMIN, subject="group:sre", role="admin")
    portal.platform.identity.invalidate_tenant("default")  # as the REST route does
    assert (await client.get("/ui")).headers["location"] == "/ui/login"


async def test_a_user_without_a_role_gets_no_session(portal: Portal, idp: FakeOidcProvider) -> None:
    idp.user, idp.claims = "eve", {}
    client = portal.client()
    refused(await client.get(await authorize(client)), client, 403, "has no role in tenant")


async def test_a_confidential_client_authenticates_with_its_secret(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    oidc = portal.platform.identity.settings.oidc
    assert oidc is not None
    idp.client_secret = "s3cret:+ &"
    client = portal.client()
    refused(await client.get(await authorize(client)), client, 401, "invalid_client")
    oidc.client_secret = SecretStr("not-the-secret")
    refused(await client.get(await authorize(client)), client, 401, "invalid_client")
    oidc.client_secret = SecretStr("s3cret:+ &")
    assert (await client.get(await authorize(client))).status_code == 303
    assert idp.token_errors == ["invalid_client", "invalid_client"]


# --- refusals -------------------------------------------------------------------------------------


async def test_a_wrong_state_is_refused(portal: Portal, idp: FakeOidcProvider) -> None:
    client = portal.client()
    callback = await authorize(client)
    refused(
        await client.get(with_query(callback, state="forged")), client, 400, "state does not match"
    )
    assert idp.token_requests == []  # the code was never redeemed


async def test_a_missing_or_expired_state_cookie_is_refused(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    callback = await authorize(portal.client())
    elsewhere = portal.client()  # another browser: no state cookie
    refused(await elsewhere.get(callback), elsewhere, 400, "state cookie is missing")

    late = portal.client()
    state = parse_qs(urlsplit(callback).query)["state"][0]
    old = _oidc.state_cookie(
        portal.platform.identity,
        state=state,
        nonce="n",
        verifier="v" * 43,
        now=time.time() - _oidc.STATE_SECONDS - 5,
    )
    expired = await late.get(callback, headers={"Cookie": f"corral_oidc={old}"})
    refused(expired, late, 400, "longer than 10 minutes")

    forged = portal.client()
    body, _, _mac = old.partition(".")
    bad_mac = await forged.get(callback, headers={"Cookie": f"corral_oidc={body}.{'A' * 43}"})
    refused(bad_mac, forged, 400, "state cookie is not valid")
    assert idp.token_requests == []


async def test_an_error_from_the_provider_is_shown(portal: Portal, idp: FakeOidcProvider) -> None:
    idp.error = "access_denied"
    client = portal.client()
    refused(await client.get(await authorize(client)), client, 400, "access_denied")


async def test_a_code_injected_into_another_sign_in_fails_pkce(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    attacker = portal.client()
    stolen_code = parse_qs(urlsplit(await authorize(attacker)).query)["code"][0]
    victim = portal.client()
    start = await victim.get("/ui/login/oidc")  # the victim's own state and verifier
    victim_state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    injected = f"http://corral/ui/login/oidc/callback?code={stolen_code}&state={victim_state}"
    refused(await victim.get(injected), victim, 401, "token endpoint refused the code")
    assert idp.token_errors == ["invalid_grant"]  # the verifier is not the stolen code's


async def test_an_id_token_with_another_nonce_is_refused(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    idp.claims["nonce"] = "replayed-nonce"
    client = portal.client()
    refused(await client.get(await authorize(client)), client, 401, "nonce is not the one")


async def test_an_id_token_for_another_audience_is_refused(
    portal: Portal, idp: FakeOidcProvider
) -> None:
    idp.claims["aud"] = "another-client"
    client = portal.client()
    refused(await client.get(await authorize(client)), client, 401, "audience is not")
