"""``/v1/audit``: which chains a caller may read."""

from __future__ import annotations

from tenancy._world import live_world


async def test_a_platform_admin_reads_any_tenant_chain_by_query_or_header(settings) -> None:
    async with live_world(settings) as world:
        await world.tenant("team-b")
        by_query = await world.as_("GET", "/v1/audit/verify", params={"tenant": "team-b"})
        by_header = await world.as_("GET", "/v1/audit/verify", tenant="team-b")
        assert by_query.status_code == 200, by_query.text
        assert by_header.status_code == 200, by_header.text
        assert (by_query.json()["ok"], by_header.json()["tenant_id"]) == (True, "team-b")
        assert by_query.json()["tenant_id"] == "team-b" and by_query.json()["events_checked"] > 0
        events = await world.as_("GET", "/v1/audit/events", params={"tenant": "team-b"})
        assert events.status_code == 200
        assert {e["tenant_id"] for e in events.json()["items"]} == {"team-b"}


async def test_a_tenant_admin_still_reads_only_its_own_chain(settings) -> None:
    async with live_world(settings) as world:
        await world.tenant("team-b")
        refused = await world.as_(
            "GET",
            "/v1/audit/verify",
            params={"tenant": "default"},
            tenant="team-b",
            principal="user:b-admin",
            roles=["admin"],
        )
        assert refused.status_code == 403 and refused.json()["code"] == "cross_tenant"
