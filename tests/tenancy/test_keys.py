"""API keys: issued once, stored as HMAC digests, revocable, expiring; every failure a 401."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from corral.store import utcnow
from corral.tenancy import ApiKeyRow, parse_key
from tenancy._world import live_world


async def test_missing_and_malformed_credentials_get_401_with_a_hint(settings) -> None:
    async with live_world(settings) as world:
        missing = await world.client.get("/v1/agents")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "corral keys create" in missing.json()["message"]
        for header in ("Basic abc", "Bearer", "Bearer crl_nothex_x", "Bearer crl_0123"):
            response = await world.client.get("/v1/agents", headers={"Authorization": header})
            assert response.status_code == 401, header
        forged = "crl_0123456789ab_" + "A" * 43
        response = await world.client.get(
            "/v1/agents", headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401
        assert response.json()["message"] == "Invalid API key."


async def test_key_is_shown_once_and_only_its_digest_is_stored(settings) -> None:
    async with live_world(settings) as world:
        created = await world.as_("POST", "/v1/keys", json={"name": "ci-bot", "roles": ["builder"]})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        key_id, secret = parse_key(key)
        assert created.json()["id"] == key_id and created.json()["principal"] == "service:ci-bot"
        listed = await world.as_("GET", "/v1/keys")
        assert key not in listed.text and secret not in listed.text
        async with world.platform.store.read("default") as session:
            row = (await session.scalars(select(ApiKeyRow).where(ApiKeyRow.id == key_id))).one()
        assert secret not in row.digest and len(row.digest) == 64
        me = await world.client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert me.json() == {
            "principal": "service:ci-bot",
            "kind": "service",
            "tenant_id": "default",
            "roles": ["builder"],
            "groups": [],
            "agent": None,
            "accountable": "user:root",
        }
        assert (row.created_by, row.accountable) == ("user:root", "user:root")
        # A builder cannot manage keys.
        denied = await world.client.get("/v1/keys", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403
        assert "keys.manage" in denied.json()["message"]


async def test_a_wrong_secret_for_a_real_key_id_is_refused(settings) -> None:
    async with live_world(settings) as world:
        key = await world.key("default", "service:bot", ["viewer"])
        key_id, _secret = parse_key(key)
        wrong = f"crl_{key_id}_{'B' * 43}"
        response = await world.client.get(
            "/v1/agents", headers={"Authorization": f"Bearer {wrong}"}
        )
        assert response.status_code == 401


async def test_revoked_key_stops_working_at_once_and_is_audited(settings) -> None:
    async with live_world(settings) as world:
        created = (
            await world.as_("POST", "/v1/keys", json={"name": "tmp", "roles": ["viewer"]})
        ).json()
        auth = {"Authorization": f"Bearer {created['key']}"}
        assert (await world.client.get("/v1/agents", headers=auth)).status_code == 200
        revoked = await world.as_("DELETE", f"/v1/keys/{created['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        response = await world.client.get("/v1/agents", headers=auth)
        assert response.status_code == 401
        assert "revoked" in response.json()["message"]
        again = await world.as_("DELETE", f"/v1/keys/{created['id']}")
        assert again.status_code == 409
        events = (await world.as_("GET", "/v1/audit/events", params={"limit": 500})).json()["items"]
        actions = [(e["action"], e["actor"]) for e in events]
        assert ("key.created", "user:root") in actions
        assert ("key.revoked", "user:root") in actions
        assert all(created["key"] not in str(e) for e in events)


async def test_expired_key_is_refused(settings) -> None:
    async with live_world(settings) as world:
        created = (
            await world.as_(
                "POST",
                "/v1/keys",
                json={"name": "short", "roles": ["viewer"], "expires_in_days": 1},
            )
        ).json()
        async with world.platform.store.transaction("default") as session:
            row = await session.get(ApiKeyRow, created["id"])
            row.expires_at = utcnow() - timedelta(seconds=1)
        world.platform.identity.invalidate_key(created["id"])
        response = await world.client.get(
            "/v1/agents", headers={"Authorization": f"Bearer {created['key']}"}
        )
        assert response.status_code == 401
        assert "expired" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "roles": []}, 400, "at least one role"),
        ({"name": "x", "roles": ["wizard"]}, 422, "'viewer', 'builder'"),
        ({"name": "bad name!", "roles": ["viewer"]}, 422, "body.name"),
        ({"name": "x", "roles": ["viewer"], "agent": "a"}, 400, "agent key"),
    ],
)
async def test_bad_key_requests_say_what_to_fix(settings, body, status, fragment) -> None:
    async with live_world(settings) as world:
        response = await world.as_("POST", "/v1/keys", json=body)
        assert response.status_code == status, response.text
        assert fragment in response.json()["message"]


async def test_agent_key_is_an_agent_identity_with_gateway_permissions_only(settings) -> None:
    async with live_world(settings) as world:
        created = (
            await world.as_("POST", "/v1/keys", json={"name": "byo", "agent": "repo-analyst"})
        ).json()
        auth = {"Authorization": f"Bearer {created['key']}"}
        me = (await world.client.get("/v1/whoami", headers=auth)).json()
        assert me["principal"] == "agent:repo-analyst" and me["agent"] == "repo-analyst"
        assert (await world.client.get("/v1/runs", headers=auth)).status_code == 403
