"""Portal sessions ended server-side (logout, sign out everywhere, an admin's sign-out) and
the platform-wide audit view (issue 13).

On SQLite and PostgreSQL. A "copied cookie" is the same cookie value set in a second client,
as an attacker who read it from the first browser would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from _portal_kit import ROLES, Portal, csrf_of, login, open_portal
from sqlalchemy import select

from corral.audit import AuditEventRow
from corral.settings import GovernanceSettings, Settings
from corral.store import utcnow
from corral.tenancy import (
    SessionRevocationRow,
    audit_identity_event,
    create_tenant,
    end_session,
    issue_key,
)


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    async with open_portal(settings) as found:
        yield found


def _copy(portal: Portal, client: httpx.AsyncClient) -> httpx.AsyncClient:
    copy = portal.client()
    # httpx files the cookies of host "corral" under "corral.local".
    value = client.cookies["corral_session"]
    copy.cookies.set("corral_session", value, domain="corral.local", path="/ui")
    return copy


async def _events(portal: Portal, action: str) -> list[AuditEventRow]:
    async with portal.platform.store.read("default") as db:
        query = select(AuditEventRow).where(
            AuditEventRow.tenant_id == "default", AuditEventRow.action == action
        )
        return list((await db.execute(query)).scalars())


async def test_a_copied_cookie_stops_working_after_logout(portal: Portal) -> None:
    bob = await portal.logged_in("user:bob")
    copy = _copy(portal, bob)
    assert (await copy.get("/ui")).status_code == 200
    page = await bob.get("/ui")
    out = await bob.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    assert (await copy.get("/ui")).headers["location"] == "/ui/login"
    # Only that session ended: another login of the same key still works.
    other = await portal.logged_in("user:bob")
    assert (await other.get("/ui")).status_code == 200


async def test_sign_out_everywhere_ends_every_session_of_the_principal(portal: Portal) -> None:
    first = await portal.logged_in("user:bob")
    second = await portal.logged_in("user:bob")
    copy = _copy(portal, second)
    dave = await portal.logged_in("user:dave")
    page = await first.get("/ui")
    assert "/ui/logout/everywhere" in page.text
    out = await first.post("/ui/logout/everywhere", data={"csrf_token": csrf_of(page.text)})
    assert (out.status_code, out.headers["location"]) == (303, "/ui/login")
    for client in (first, second, copy):
        assert (await client.get("/ui")).headers["location"] == "/ui/login"
    assert (await dave.get("/ui")).status_code == 200  # another principal's session lives on
    (event,) = await _events(portal, "session.signed_out_everywhere")
    assert (event.actor, event.subject) == ("user:bob", "user:bob")


async def test_an_admin_signs_another_principal_out(portal: Portal) -> None:
    dave = await portal.logged_in("user:dave")
    bob = await portal.logged_in("user:bob")
    erin = await portal.logged_in("user:erin")
    page = await erin.get("/ui/tenancy")
    assert 'id="sign-out"' in page.text
    done = await erin.post(
        "/ui/tenancy/sign-out",
        data={"csrf_token": csrf_of(page.text), "principal": "user:dave"},
    )
    assert (done.status_code, done.headers["location"]) == (303, "/ui/tenancy")
    assert (await dave.get("/ui")).headers["location"] == "/ui/login"
    assert (await bob.get("/ui")).status_code == 200
    assert (await erin.get("/ui")).status_code == 200
    (event,) = await _events(portal, "session.signed_out")
    assert (event.actor, event.subject) == ("user:erin", "user:dave")
    empty = await erin.post(
        "/ui/tenancy/sign-out", data={"csrf_token": csrf_of(page.text), "principal": " "}
    )
    assert empty.status_code == 400


async def test_a_non_admin_cannot_sign_anyone_out(portal: Portal) -> None:
    bob = await portal.logged_in("user:bob")
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui")
    assert 'id="sign-out"' not in page.text
    refused = await dave.post(
        "/ui/tenancy/sign-out", data={"csrf_token": csrf_of(page.text), "principal": "user:bob"}
    )
    assert refused.status_code == 403
    assert (await bob.get("/ui")).status_code == 200
    assert await _events(portal, "session.signed_out") == []


async def test_expired_revocations_are_pruned_when_one_is_written(portal: Portal) -> None:
    store = portal.platform.store
    bob = await portal.platform.identity.authenticate(f"Bearer {portal.keys['user:bob']}")
    await end_session(store, bob, "a" * 22, expires_at=utcnow() - timedelta(seconds=1))
    await end_session(store, bob, "b" * 22, expires_at=utcnow() + timedelta(hours=1))
    async with store.read("default") as db:
        left = (await db.execute(select(SessionRevocationRow.session_id))).scalars()
        assert list(left) == ["b" * 22]


# --- the platform-wide audit view -----------------------------------------------------------------


async def _acme_event(portal: Portal) -> None:
    store = portal.platform.store
    await create_tenant(store, tenant_id="acme", display_name=None, actor="user:test")
    await audit_identity_event(
        store, "acme", actor="user:acme-admin", action="acme.private", subject="acme:secret"
    )


async def test_a_platform_admin_reads_another_tenants_audit_events(portal: Portal) -> None:
    await _acme_event(portal)
    key = await issue_key(
        portal.platform.store,
        server_secret=portal.platform.identity.server_secret,
        tenant_id="default",
        principal="user:root",
        roles=["admin", "platform-admin"],
        name="portal-root",
    )
    root = portal.client()
    assert (await login(root, key)).status_code == 303
    own = await root.get("/ui/audit")
    assert own.status_code == 200 and 'id="f-tenant"' in own.text
    assert '<option value="acme"' in own.text and "acme.private" not in own.text
    acme = await root.get("/ui/audit", params={"tenant": "acme"})
    assert acme.status_code == 200 and "acme.private" in acme.text
    every = await root.get("/ui/audit", params={"tenant": "*all"})
    assert every.status_code == 200 and "acme.private" in every.text
    assert "<td>default</td>" in every.text and "<td>acme</td>" in every.text
    verified = await root.get("/ui/audit/verify", params={"tenant": "acme"})
    assert verified.status_code == 200 and 'id="chain-status">verified' in verified.text
    assert (await root.get("/ui/audit/verify", params={"tenant": "*all"})).status_code == 400
    assert (await root.get("/ui/audit", params={"tenant": "nope"})).status_code == 404


async def test_a_tenant_admin_cannot_read_another_tenants_audit_events(portal: Portal) -> None:
    await _acme_event(portal)
    erin = await portal.logged_in("user:erin")
    own = await erin.get("/ui/audit")
    assert own.status_code == 200 and 'id="f-tenant"' not in own.text
    assert (await erin.get("/ui/audit", params={"tenant": "default"})).status_code == 200
    for forged in ("acme", "*all", "nope"):
        for path in ("/ui/audit", "/ui/audit/verify"):
            refused = await erin.get(path, params={"tenant": forged})
            assert refused.status_code == 403, (path, forged)
            assert "cross_tenant" in refused.text or "not yours" in refused.text
            assert "acme.private" not in refused.text


async def test_a_platform_admin_sees_every_tenant_on_the_tenancy_page(portal: Portal) -> None:
    await create_tenant(
        portal.platform.store, tenant_id="acme", display_name="Acme", actor="user:t"
    )
    key = await issue_key(
        portal.platform.store,
        server_secret=portal.platform.identity.server_secret,
        tenant_id="default",
        principal="user:root",
        roles=["admin", "platform-admin"],
        name="portal-root",
    )
    root = portal.client()
    assert (await login(root, key)).status_code == 303
    page = await root.get("/ui/tenancy")
    assert page.status_code == 200 and 'id="quotas"' in page.text
    tenants = page.text[page.text.index('id="tenants"') :].split("</table>")[0]
    assert "<td>acme</td><td>Acme</td>" in tenants and "<td>default</td>" in tenants
    assert "by user:t" in tenants
    # A tenant admin gets the keys and quotas of the tenant, never the list of tenants.
    erin = await portal.logged_in("user:erin")
    assert 'id="tenants"' not in (await erin.get("/ui/tenancy")).text
