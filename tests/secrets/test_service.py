"""The broker on SQLite and PostgreSQL: set, rotate, list, delete, reveal, render, secret.use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from _secrets_world import platform_fixture, policy_document, secret_settings_fixture  # noqa: F401
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select, update

from conftest import register
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.errors import CorralError, InvalidRequest, NotFound, PolicyDenied
from corral.platform import Platform
from corral.policy import (
    DEFAULT_POLICIES,
    Entity,
    EntityRef,
    PolicyEngine,
    PolicySource,
    load_cases,
    run_cases,
)
from corral.policy._tables import PolicyDecisionRow
from corral.secrets import SecretBroker, secret_scope
from corral.secrets._tables import SecretRow
from corral.settings import Settings
from corral.store import SYSTEM, Base

VALUE = "planted-7f3c9a1e-value"
ROTATED = "rotated-0b5d22c4-value"


async def audit_events(platform: Platform, tenant_id: str = "default") -> list[AuditEventRow]:
    async with platform.store.read(tenant_id) as session:
        rows = await session.execute(
            select(AuditEventRow)
            .where(AuditEventRow.tenant_id == tenant_id)
            .order_by(AuditEventRow.seq)
        )
        return list(rows.scalars())


def dump(rows: list[Any]) -> str:
    """Every column of every row as text (bytes as latin-1, so any byte sequence shows)."""
    values = []
    for row in rows:
        for column in row.__table__.columns:
            value = getattr(row, column.key)
            values.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return json.dumps(values, default=str)


async def test_set_rotate_list_delete_are_audited_without_the_value(platform: Platform) -> None:
    broker = platform.secrets
    created = await broker.set("default", "api-token", VALUE, actor="user:alice")
    assert (created.name, created.version, created.created_by) == ("api-token", 1, "user:alice")
    rotated = await broker.set("default", "api-token", ROTATED, actor="user:bob")
    assert (rotated.version, rotated.created_by, rotated.updated_by) == (
        2,
        "user:alice",
        "user:bob",
    )
    assert rotated.created_at == created.created_at < rotated.updated_at
    await broker.set("default", "b-other", "another-value", actor="user:alice")
    assert [(s.name, s.version) for s in await broker.list("default")] == [
        ("api-token", 2),
        ("b-other", 1),
    ]
    assert [s.name for s in await broker.list("default", limit=1, after="api-token")] == ["b-other"]
    assert await broker.reveal("default", "api-token") == ROTATED

    deleted = await broker.delete("default", "api-token", actor="user:carol")
    assert deleted.version == 2
    with pytest.raises(NotFound, match="corral secrets set api-token"):
        await broker.reveal("default", "api-token")
    with pytest.raises(NotFound):
        await broker.delete("default", "api-token", actor="user:carol")

    events = [e for e in await audit_events(platform) if e.action.startswith("secret.")]
    assert [(e.actor, e.action, e.subject, e.details) for e in events] == [
        ("user:alice", "secret.created", "secret:api-token", {"name": "api-token", "version": 1}),
        (
            "user:bob",
            "secret.rotated",
            "secret:api-token",
            {"name": "api-token", "version": 2, "previous_version": 1},
        ),
        ("user:alice", "secret.created", "secret:b-other", {"name": "b-other", "version": 1}),
        ("user:carol", "secret.deleted", "secret:api-token", {"name": "api-token", "version": 2}),
    ]
    everything = dump(await audit_events(platform))
    assert VALUE not in everything and ROTATED not in everything
    async with platform.store.read("default") as session:
        assert (await verify_chain(session, tenant_id="default")).ok


async def test_the_store_holds_ciphertext_only(platform: Platform) -> None:
    await platform.secrets.set("default", "api-token", VALUE, actor="user:alice")
    await platform.secrets.set("default", "api-token", ROTATED, actor="user:alice")
    async with platform.store.read(SYSTEM) as session:
        rows = list((await session.execute(select(SecretRow))).scalars())
    assert len(rows) == 1 and rows[0].master_key_id == platform.secrets.master_key.key_id
    stored = dump(rows)
    for value in (VALUE, ROTATED):
        assert value not in stored and value.encode().hex() not in stored


async def test_tenant_b_cannot_reveal_or_list_tenant_a_secrets(platform: Platform) -> None:
    broker = platform.secrets
    await broker.set("tenant-a", "api-token", VALUE, actor="user:alice")
    with pytest.raises(NotFound) as caught:
        await broker.reveal("tenant-b", "api-token")
    assert "tenant 'tenant-b'" in caught.value.message and "tenant-a" not in caught.value.message
    assert await broker.list("tenant-b") == []
    with pytest.raises(NotFound):
        await broker.delete("tenant-b", "api-token", actor="user:mallory")

    await broker.set("tenant-b", "api-token", ROTATED, actor="user:bob")
    assert await broker.reveal("tenant-a", "api-token") == VALUE
    assert await broker.reveal("tenant-b", "api-token") == ROTATED
    assert [s.updated_by for s in await broker.list("tenant-a")] == ["user:alice"]


async def _copy_columns(platform: Platform, source: str, target: str, name: str) -> None:
    columns = ("version", "master_key_id", "wrapped_key", "key_nonce", "nonce", "ciphertext")
    async with platform.store.transaction(SYSTEM) as session:
        row = (
            await session.execute(
                select(SecretRow).where(SecretRow.tenant_id == source, SecretRow.name == name)
            )
        ).scalar_one()
        values = {column: getattr(row, column) for column in columns}
        await session.execute(
            update(SecretRow)
            .where(SecretRow.tenant_id == target, SecretRow.name == name)
            .values(**values)
        )


async def test_a_ciphertext_copied_to_another_tenant_does_not_decrypt(platform: Platform) -> None:
    broker = platform.secrets
    await broker.set("tenant-a", "api-token", VALUE, actor="user:alice")
    await broker.set("tenant-b", "api-token", "tenant-b-own-value", actor="user:bob")
    await _copy_columns(platform, "tenant-a", "tenant-b", "api-token")
    with pytest.raises(CorralError) as caught:
        await broker.reveal("tenant-b", "api-token")
    assert caught.value.code == "secret_undecryptable"
    assert VALUE not in caught.value.message

    # Moving tenant A's whole row (its id included) to tenant C does not work either.
    async with platform.store.transaction(SYSTEM) as session:
        await session.execute(
            update(SecretRow).where(SecretRow.tenant_id == "tenant-a").values(tenant_id="tenant-c")
        )
    with pytest.raises(CorralError, match="failed authentication"):
        await broker.reveal("tenant-c", "api-token")


@pytest.mark.parametrize("name", ["", "1token", "-x", "a b", "a/b", "x" * 129, "tok${x}"])
async def test_invalid_names_are_refused(platform: Platform, name: str) -> None:
    with pytest.raises(InvalidRequest, match="not a valid secret name"):
        await platform.secrets.set("default", name, VALUE, actor="user:alice")
    with pytest.raises(InvalidRequest):
        await platform.secrets.render("default", f"${{secret:{name}}}")


async def test_empty_and_oversized_values_are_refused(platform: Platform) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        await platform.secrets.set("default", "api-token", "", actor="user:alice")
    too_big = "x" * (platform.settings.secrets.max_value_bytes + 1)
    with pytest.raises(InvalidRequest, match="CORRAL_SECRETS__MAX_VALUE_BYTES") as caught:
        await platform.secrets.set("default", "api-token", too_big, actor="user:alice")
    assert too_big not in caught.value.message
    assert await platform.secrets.list("default") == []


async def test_render_checks_each_name_once_then_reveals(platform: Platform) -> None:
    broker = platform.secrets
    await broker.set("default", "user", "svc-account", actor="user:alice")
    await broker.set("default", "password", VALUE, actor="user:alice")
    checked: list[str] = []

    async def check(name: str) -> None:
        checked.append(name)

    template = "${secret:user}:${secret:password}@host/${secret:user}"
    rendered, values = await broker.render("default", template, check=check)
    assert rendered == f"svc-account:{VALUE}@host/svc-account"
    assert (checked, values) == (["user", "password"], ["svc-account", VALUE])
    assert await broker.render("default", "no references $ {secret:x}") == (
        "no references $ {secret:x}",
        [],
    )
    # One pass: a value that looks like a reference stays as it is.
    await broker.set("default", "tricky", "${secret:password}", actor="user:alice")
    assert (await broker.render("default", "${secret:tricky}"))[0] == "${secret:password}"


async def test_a_refused_check_reveals_nothing(platform: Platform) -> None:
    await platform.secrets.set("default", "password", VALUE, actor="user:alice")

    async def refuse(name: str) -> None:
        raise PolicyDenied(f"no {name}")

    with secret_scope() as revealed:
        with pytest.raises(PolicyDenied, match="no password"):
            await platform.secrets.render("default", "${secret:password}", check=refuse)
        with pytest.raises(NotFound, match="`corral secrets set missing`"):
            await platform.secrets.render("default", "${secret:missing}")
    assert revealed.values == []


def _agent(name: str = "deployer") -> Entity:
    attrs = {"tenant": "default", "owner": "ops", "risk_tier": "low", "status": "active"}
    return Entity(EntityRef("Agent", name), attrs)


TOOL = Entity(
    EntityRef("Tool", "http.deploy"),
    {"tenant": "default", "owner": "ops", "side_effect": "write", "risk": "medium", "kind": "http"},
)


async def _decisions(platform: Platform) -> list[PolicyDecisionRow]:
    async with platform.store.read("default") as session:
        rows = await session.execute(
            select(PolicyDecisionRow).where(PolicyDecisionRow.action == "secret.use")
        )
        return list(rows.scalars())


async def test_secret_use_is_decided_by_policy_and_recorded(platform: Platform) -> None:
    broker = platform.secrets
    await broker.set("default", "deploy-key", VALUE, actor="user:alice")
    check = broker.use_check(
        "default", principal=_agent(), resource=TOOL, stage="dev", run_id="run_x"
    )
    with pytest.raises(PolicyDenied) as denied:
        await broker.render("default", "key=${secret:deploy-key}", check=check)
    assert "using secret 'deploy-key' through Tool::\"http.deploy\"" in denied.value.message
    assert 'context.secret == "deploy-key"' in denied.value.message

    await register(
        platform,
        policy_document(
            "deployer-secrets",
            'permit (principal == Agent::"deployer", action == Action::"secret.use", '
            'resource == Tool::"http.deploy") when { context has secret && '
            'context.secret == "deploy-key" };',
        ),
    )
    platform.governance.invalidate("default")
    assert await broker.render("default", "key=${secret:deploy-key}", check=check) == (
        f"key={VALUE}",
        [VALUE],
    )
    other_agent = broker.use_check("default", principal=_agent("intruder"), resource=TOOL)
    with pytest.raises(PolicyDenied):
        await broker.render("default", "${secret:deploy-key}", check=other_agent)
    nobody = broker.use_check("default", principal=None, resource=TOOL)
    with pytest.raises(PolicyDenied, match="no calling principal"):
        await nobody("deploy-key")

    decisions = await _decisions(platform)
    assert [(d.principal, d.decision, d.run_id) for d in decisions] == [
        ('Agent::"deployer"', "deny", "run_x"),
        ('Agent::"deployer"', "allow", "run_x"),
        ('Agent::"intruder"', "deny", None),
    ]
    used = [e for e in await audit_events(platform) if e.action == "secret.used"]
    assert [(e.actor, e.outcome, e.policy_decision_id) for e in used] == [
        ("agent:deployer", "denied", decisions[0].id),
        ("agent:deployer", "allowed", decisions[1].id),
        ("agent:intruder", "denied", decisions[2].id),
    ]
    assert VALUE not in dump(decisions) + dump(used)


async def test_the_embedded_mode_generates_the_master_key(settings: Settings) -> None:
    broker = SecretBroker(Platform(settings).store, settings)
    try:
        if settings.store_url.startswith("sqlite"):
            assert broker.master_key.source == str(settings.home / "master.key")
            assert (Path(settings.home) / "master.key").stat().st_mode & 0o777 == 0o600
        else:
            with pytest.raises(CorralError) as caught:
                broker.master_key  # noqa: B018
            assert caught.value.code == "master_key_missing"
    finally:
        await broker.store.dispose()


async def test_the_migration_creates_exactly_the_table_model(platform: Platform) -> None:
    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [diff for diff in found if "secrets" in diff]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


SECRET_CASES = """\
context: {tenant: default, stage: dev, requester: user:alice}
entities:
  - uid: Agent::deployer
    attrs: {tenant: default, owner: ops, risk_tier: low, status: active}
  - uid: Tool::"http.deploy"
    attrs: {tenant: default, owner: ops, side_effect: write, risk: medium, kind: http}
cases:
  - name: the deploy key is permitted
    principal: Agent::deployer
    action: secret.use
    resource: Tool::http.deploy
    context: {secret: deploy-key}
    expect: allow
  - name: another secret is not
    principal: Agent::deployer
    action: secret.use
    resource: Tool::http.deploy
    context: {secret: db-password}
    expect: deny
  - name: nor a use without a secret name
    principal: Agent::deployer
    action: secret.use
    resource: Tool::http.deploy
    expect: deny
"""


def test_policy_test_cases_can_name_the_secret() -> None:
    permit = PolicySource(
        "deploy-key",
        'permit (principal, action == Action::"secret.use", resource) '
        'when { context has secret && context.secret == "deploy-key" };',
    )
    engine = PolicyEngine([*DEFAULT_POLICIES, permit])
    results = run_cases(engine, load_cases(SECRET_CASES))
    assert [(r.case.name, r.passed) for r in results] == [
        ("the deploy key is permitted", True),
        ("another secret is not", True),
        ("nor a use without a secret name", True),
    ]


async def test_concurrent_sets_make_consecutive_versions(platform: Platform) -> None:
    values = [f"concurrent-value-{n:02d}" for n in range(8)]
    infos = await asyncio.gather(
        *(platform.secrets.set("default", "raced", v, actor="user:alice") for v in values)
    )
    assert sorted(info.version for info in infos) == list(range(1, 9))
    last = max(infos, key=lambda info: info.version)
    assert await platform.secrets.reveal("default", "raced") in values
    assert (await platform.secrets.list("default"))[0].version == last.version == 8
    events = [e for e in await audit_events(platform) if e.subject == "secret:raced"]
    assert [e.details["version"] for e in events] == list(range(1, 9))


async def test_inside_a_call_the_scope_check_decides_each_name_once(platform: Platform) -> None:
    await platform.secrets.set("default", "password", VALUE, actor="user:alice")
    checked: list[str] = []

    async def check(name: str) -> None:
        checked.append(name)

    with secret_scope(check) as revealed:
        await platform.secrets.render("default", "a=${secret:password}")
        await platform.secrets.render("default", "b=${secret:password}")
        await platform.secrets.render("default", "c=${secret:password}", check=check)
    assert checked == ["password", "password"]
    assert revealed.values == [VALUE] and revealed.allowed == {"password"}
