"""Local users, personal keys, and the accountable human every key records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select, text

from corral.platform import Platform
from corral.settings import Settings
from corral.store import SYSTEM, utcnow
from corral.store._base import Base
from corral.store._migrate import _config
from corral.tenancy import ApiKeyRow, accountable_humans
from tenancy._world import live_world


async def test_admins_create_local_users_and_their_personal_keys(settings: Settings) -> None:
    async with live_world(settings) as world:
        made = await world.as_(
            "POST", "/v1/users", json={"name": "alice", "display_name": "Alice Martin"}
        )
        assert made.status_code == 201, made.text
        assert (made.json()["name"], made.json()["created_by"]) == ("alice", "user:root")
        again = await world.as_("POST", "/v1/users", json={"name": "alice"})
        assert again.status_code == 409 and "corral keys create --user alice" in again.text
        for bad in ("local-admin", "bad name", "-x"):
            refused = await world.as_("POST", "/v1/users", json={"name": bad})
            assert refused.status_code == 400, (bad, refused.text)
        builder = await world.as_(
            "POST", "/v1/users", json={"name": "eve"}, principal="service:b", roles=["builder"]
        )
        assert (builder.status_code, builder.json()["code"]) == (403, "permission_denied")
        viewer = await world.as_("GET", "/v1/users", principal="service:v", roles=["viewer"])
        assert [u["name"] for u in viewer.json()["items"]] == ["alice"]

        unknown = await world.as_(
            "POST", "/v1/keys", json={"name": "k", "user": "bob", "roles": ["approver"]}
        )
        assert unknown.status_code == 404 and "corral users create bob" in unknown.text
        both = await world.as_(
            "POST", "/v1/keys", json={"name": "k", "user": "alice", "agent": "repo-analyst"}
        )
        assert both.status_code == 400
        key = await world.as_(
            "POST", "/v1/keys", json={"name": "alice", "user": "alice", "roles": ["approver"]}
        )
        assert key.status_code == 201, key.text
        body = key.json()
        assert (body["principal"], body["kind"], body["created_by"], body["accountable"]) == (
            "user:alice",
            "user",
            "user:root",
            "user:alice",
        )
        me = await world.client.get(
            "/v1/whoami", headers={"Authorization": f"Bearer {body['key']}"}
        )
        assert (me.json()["principal"], me.json()["accountable"]) == ("user:alice", "user:alice")

        events = (await world.as_("GET", "/v1/audit/events", params={"limit": 500})).json()
        seen = [(e["action"], e["actor"], e["subject"]) for e in events["items"]]
        assert ("user.created", "user:root", "user:alice") in seen
        [granted] = [e for e in events["items"] if e["action"] == "role.granted"]
        assert (granted["subject"], granted["details"]) == (
            "user:alice",
            {"role": "approver", "key_id": body["id"], "accountable": "user:alice"},
        )


async def test_keys_minted_by_keys_stay_accountable_to_the_first_human(
    settings: Settings,
) -> None:
    async with live_world(settings) as world:
        ops = await world.as_("POST", "/v1/keys", json={"name": "ops", "roles": ["admin"]})
        auth = {"Authorization": f"Bearer {ops.json()['key']}"}
        minted = await world.client.post(
            "/v1/keys", json={"name": "sub", "roles": ["approver"]}, headers=auth
        )
        agent = await world.client.post(
            "/v1/keys", json={"name": "byo", "agent": "repo-analyst"}, headers=auth
        )
        for created in (minted, agent):
            assert created.status_code == 201, created.text
            assert (created.json()["created_by"], created.json()["accountable"]) == (
                "service:ops",
                "user:root",
            )
        listed = {k["name"]: k for k in (await world.as_("GET", "/v1/keys")).json()["items"]}
        assert (listed["ops"]["created_by"], listed["ops"]["accountable"]) == (
            "user:root",
            "user:root",
        )
        assert await accountable_humans(world.platform.store, "default", "service:sub") == {
            "service:sub",
            "user:root",
        }
        assert await accountable_humans(world.platform.store, "default", "user:oidc") == {
            "user:oidc"
        }
        # Another tenant's key with the same principal answers for nothing here.
        await world.tenant("team-red")
        await world.key("team-red", "service:sub", ["approver"])
        assert await accountable_humans(world.platform.store, "default", "service:sub") == {
            "service:sub",
            "user:root",
        }


def _upgrade(connection: Connection, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


KEYS_BEFORE = [
    # (id, kind, principal, created_by) in creation order -> accountable after the migration
    ("k1", "user", "user:local-admin", "system", "user:local-admin"),
    ("k2", "service", "service:ops", "user:local-admin", "user:local-admin"),
    ("k3", "service", "service:sub", "service:ops", "user:local-admin"),
    ("k4", "agent", "agent:byo", "service:gone", "service:gone"),
    ("k5", "service", "service:boot", "system", "service:boot"),
]


async def test_the_migration_backfills_accountable_humans(settings: Settings) -> None:
    platform = Platform(settings)
    start = utcnow() - timedelta(hours=1)
    rows: list[dict[str, Any]] = [
        {
            "id": key_id,
            "tenant_id": "default",
            "name": key_id,
            "kind": kind,
            "principal": principal,
            "agent_name": None,
            "roles": ["admin"],
            "digest": "0" * 64,
            "created_by": created_by,
            "created_at": start + timedelta(minutes=index),
        }
        for index, (key_id, kind, principal, created_by, _) in enumerate(KEYS_BEFORE)
    ]
    columns = [c for c in ApiKeyRow.__table__.c if c.name != "accountable"]

    def before(connection: Connection) -> None:
        _upgrade(connection, "0007")
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT set_config('corral.tenant_id', '*', true)"))
        connection.execute(ApiKeyRow.__table__.insert().values(), rows)
        assert {c.name for c in columns} | {"accountable"} == set(ApiKeyRow.__table__.c.keys())

    try:
        async with platform.store.engine.begin() as connection:
            await connection.run_sync(before)
        await platform.start()  # migrates to the head
        async with platform.store.read(SYSTEM) as session:
            result = await session.execute(select(ApiKeyRow.id, ApiKeyRow.accountable))
            stored = dict(list(result))
        assert stored == {key_id: human for key_id, *_, human in KEYS_BEFORE}
    finally:
        await platform.close()


@pytest.mark.parametrize("table", ["api_keys", "approval_votes", "local_users"])
async def test_the_migration_creates_exactly_the_table_model(
    make_platform: Any, table: str
) -> None:
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [diff for diff in found if table in diff]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
