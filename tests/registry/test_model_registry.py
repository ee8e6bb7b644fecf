"""``Model`` documents in the registry: versioned per tenant, tables as migration 0011 made them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select

from corral.audit._tables import AuditEventRow
from corral.contracts import parse_document
from corral.errors import InvalidContract
from corral.platform import Platform
from corral.registry import BUILTIN_DEFAULT_MODEL, apply_documents, default_models, tenant_models
from corral.settings import Settings
from corral.store import Base


def _model(*deployments: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": "smart"},
        "spec": {"deployments": list(deployments)},
    }


async def _apply(platform: Platform, document: dict[str, Any], tenant: str = "default") -> Any:
    async with platform.store.transaction(tenant) as session:
        [result] = await apply_documents(
            session, [parse_document(document)], tenant_id=tenant, actor="user:test"
        )
    return result


async def test_a_changed_model_is_a_new_version_and_an_unchanged_one_a_no_op(
    make_platform: Any,
) -> None:
    platform: Platform = await make_platform()
    first = await _apply(platform, _model({"provider": "openai", "model": "a"}))
    same = await _apply(platform, _model({"provider": "openai", "model": "a"}))
    changed = await _apply(
        platform,
        _model({"provider": "openai", "model": "a"}, {"provider": "anthropic", "model": "b"}),
    )
    assert [(r.kind, r.action, r.version) for r in (first, same, changed)] == [
        ("Model", "created", "0.1.0"),
        ("Model", "unchanged", "0.1.0"),
        ("Model", "updated", "0.1.1"),
    ]
    async with platform.store.read("default") as session:
        models = await tenant_models(session, tenant_id="default")
        actions = list(
            await session.scalars(
                select(AuditEventRow.action).where(AuditEventRow.subject.like("model:%"))
            )
        )
    assert [d.model for d in models["smart"].spec.deployments] == ["a", "b"]
    assert models["smart"].metadata.version == "0.1.1"
    assert sorted(actions) == ["model.created", "model.version_created"]


async def test_another_tenant_does_not_see_the_model(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    await _apply(platform, _model({"provider": "openai", "model": "a"}))
    async with platform.store.read("acme") as session:
        assert await tenant_models(session, tenant_id="acme") == {}


async def test_the_model_tables_match_migration_0011(make_platform: Any) -> None:
    platform: Platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [d for d in found if "'models'" in d or "'model_versions'" in d]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


def test_the_default_set_comes_from_settings_with_default_built_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _model({"provider": "openai", "model": "gpt-4o-mini"}) | {"metadata": {"name": "fast"}}
    monkeypatch.setenv("CORRAL_MODELS__DEFAULTS", json.dumps([fast]))
    monkeypatch.setenv("CORRAL_REGION", "eu-west")
    settings = Settings()
    assert settings.region == "eu-west"
    defaults = default_models(settings.models.defaults)
    assert sorted(defaults) == ["default", "fast"]
    assert defaults["default"] is BUILTIN_DEFAULT_MODEL
    assert [d.provider for d in BUILTIN_DEFAULT_MODEL.deployments] == ["local"]
    with pytest.raises(InvalidContract) as info:
        default_models([{**fast, "kind": "Agent"}])
    assert "CORRAL_MODELS__DEFAULTS" in info.value.message
