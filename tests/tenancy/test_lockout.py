"""The last way back in cannot be closed by accident (suspension, revocation) without force."""

from __future__ import annotations

from corral.tenancy import parse_key
from tenancy._world import live_world


async def test_suspending_the_tenant_of_every_platform_admin_needs_force(settings) -> None:
    async with live_world(settings) as world:
        root_key = parse_key(await world.key("default", "user:root", ["platform-admin"]))[0]
        refused = await world.as_("POST", "/v1/tenants/default/suspend", json={"reason": "oops"})
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["code"] == "last_way_in"
        assert root_key in body["message"] and "--force" in body["message"]
        assert (await world.as_("GET", "/v1/whoami")).status_code == 200  # still active

        # With a platform admin elsewhere, the suspension is not the last way in.
        await world.tenant("ops")
        await world.key("ops", "user:ops-admin", ["platform-admin"])
        done = await world.as_("POST", "/v1/tenants/default/suspend", json={"reason": "drill"})
        assert done.status_code == 200, done.text
        resumed = await world.as_(
            "POST", "/v1/tenants/default/resume", tenant="ops", principal="user:ops-admin"
        )
        assert resumed.status_code == 200, resumed.text


async def test_force_suspends_the_last_way_in_and_says_so_beforehand(settings) -> None:
    async with live_world(settings) as world:
        forced = await world.as_(
            "POST", "/v1/tenants/default/suspend", json={"reason": "wind down", "force": True}
        )
        assert forced.status_code == 200, forced.text
        locked = await world.as_("POST", "/v1/tenants/default/resume")
        assert locked.status_code == 403


async def test_revoking_the_last_platform_admin_key_needs_force(settings) -> None:
    async with live_world(settings) as world:
        root_key = parse_key(await world.key("default", "user:root", ["platform-admin"]))[0]
        refused = await world.as_("DELETE", f"/v1/keys/{root_key}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "last_way_in"
        assert "last working platform-admin key" in refused.json()["message"]

        spare = await world.as_(
            "POST", "/v1/keys", json={"name": "spare", "roles": ["platform-admin"]}
        )
        assert spare.status_code == 201, spare.text
        assert (await world.as_("DELETE", f"/v1/keys/{root_key}")).status_code == 200
        spare_auth = {"Authorization": f"Bearer {spare.json()['key']}"}
        spare_id = spare.json()["id"]
        again = await world.client.delete(f"/v1/keys/{spare_id}", headers=spare_auth)
        assert again.status_code == 409, again.text
        forced = await world.client.delete(
            f"/v1/keys/{spare_id}", params={"force": "true"}, headers=spare_auth
        )
        assert forced.status_code == 200, forced.text
        assert (await world.client.get("/v1/whoami", headers=spare_auth)).status_code == 401


async def test_other_keys_revoke_and_other_tenants_suspend_without_force(settings) -> None:
    async with live_world(settings) as world:
        await world.tenant("team-b")
        await world.key("team-b", "user:b-admin", ["admin"])
        assert (
            await world.as_("POST", "/v1/tenants/team-b/suspend", json={"reason": "unpaid"})
        ).status_code == 200
        viewer = await world.as_("POST", "/v1/keys", json={"name": "v", "roles": ["viewer"]})
        assert (await world.as_("DELETE", f"/v1/keys/{viewer.json()['id']}")).status_code == 200
