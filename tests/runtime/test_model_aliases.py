"""Agents name model aliases: a tenant's ``Model`` documents, else the platform's defaults.

Runs go through the real runtime and store (both databases): failover between deployments is
audited, ``model.call`` is decided per deployment with its region in the policy context, a
data-residency agent never reaches another region, and aliases are per tenant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import agent_document, register
from corral.audit._tables import AuditEventRow
from corral.contracts import parse_document
from corral.errors import ModelAPIError, NotFound
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.observability import SpanRow
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.registry import apply_documents
from corral.runtime import create_run, get_run, list_steps
from corral.testing import ScriptedModel


def model_document(name: str, *deployments: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"description": f"The {name} alias.", "deployments": list(deployments)},
    }


def _down(_request: ModelRequest) -> FinalAnswer:
    raise ModelAPIError("upstream returned 503", provider="down", status_code=503)


async def run_to_end(platform: Platform, workspace: Path) -> tuple[Any, list[Any]]:
    async with platform.store.transaction("default") as session:
        created = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="What is in this repository?",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    async with platform.store.transaction("default") as session:
        run = await get_run(session, created.id, tenant_id="default")
        steps = await list_steps(session, created.id, tenant_id="default")
    return run, steps


async def test_an_alias_fails_over_between_deployments_and_the_failover_is_audited(
    make_platform: Any, workspace: Path
) -> None:
    spare = ScriptedModel([ScriptedModel.answer("from spare")], name="spare")
    platform: Platform = await make_platform(down=ScriptedModel(_down, name="down"), spare=spare)
    await register(
        platform,
        model_document(
            "smart",
            {"provider": "down", "model": "d1", "region": "eu-west", "weight": 1000},
            {"provider": "spare", "model": "s1", "region": "eu-west"},
        ),
        agent_document(model={"default": "smart"}),
    )
    run, steps = await run_to_end(platform, workspace)
    assert (run.status, run.output) == ("SUCCEEDED", "from spare")
    assert steps[0][0].model == "spare/s1"
    async with platform.store.read("default") as session:
        events = (
            await session.scalars(
                select(AuditEventRow).where(
                    AuditEventRow.run_id == run.id, AuditEventRow.action == "model.failover"
                )
            )
        ).all()
        decisions = (
            await session.scalars(
                select(PolicyDecisionRow).where(
                    PolicyDecisionRow.run_id == run.id, PolicyDecisionRow.action == "model.call"
                )
            )
        ).all()
    [event] = events
    assert (event.subject, event.outcome) == ("model:smart", "failed")
    assert event.details["deployment"] == "smart#0"
    assert event.details["served_by"] == "smart#1"
    assert "503" in event.details["error"]
    assert sorted(d.resource for d in decisions) == ['Model::"down/d1"', 'Model::"spare/s1"']


FORBID_US = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "eu-only-models"},
    "spec": {
        "description": "Model calls stay in the EU.",
        "cedar": (
            '@id("eu-only-models")\n'
            '@reason("model deployments outside eu-west are not approved")\n'
            'forbid (principal, action == Action::"model.call", resource)\n'
            'when { context has region && context.region != "eu-west" };\n'
        ),
    },
}


async def test_model_call_policy_sees_the_deployment_region_and_a_denied_one_is_never_called(
    make_platform: Any, workspace: Path
) -> None:
    us = ScriptedModel([ScriptedModel.answer("from us")], name="us")
    eu = ScriptedModel([ScriptedModel.answer("from eu")], name="eu")
    platform: Platform = await make_platform(us=us, eu=eu)
    await register(
        platform,
        model_document(
            "smart",
            {"provider": "us", "model": "m", "region": "us-east", "weight": 1000},
            {"provider": "eu", "model": "m", "region": "eu-west"},
        ),
        agent_document(model={"default": "smart"}),
        FORBID_US,
    )
    run, _ = await run_to_end(platform, workspace)
    assert (run.status, run.output) == ("SUCCEEDED", "from eu")
    assert us.requests == []
    async with platform.store.read("default") as session:
        decisions = {
            d.resource: (d.decision, list(d.determining_policies))
            for d in await session.scalars(
                select(PolicyDecisionRow).where(PolicyDecisionRow.run_id == run.id)
            )
            if d.action == "model.call"
        }
    # The forbid policy reads context.region: the us-east deployment was decided with it.
    assert decisions == {
        'Model::"us/m"': ("deny", ["eu-only-models"]),
        'Model::"eu/m"': ("allow", ["model-call"]),
    }


async def test_a_data_residency_agent_never_reaches_another_region(
    make_platform: Any, workspace: Path
) -> None:
    us = ScriptedModel([ScriptedModel.answer("from us")], name="us")
    eu = ScriptedModel(_down, name="eu")
    platform: Platform = await make_platform(us=us, eu=eu)
    await register(
        platform,
        model_document(
            "smart",
            {"provider": "eu", "model": "m", "region": "eu-west"},
            {"provider": "us", "model": "m", "region": "us-east", "weight": 1000},
        ),
        agent_document(model={"default": "smart"}, data_residency=["eu-west"]),
    )
    run, _ = await run_to_end(platform, workspace)
    assert (run.status, run.terminal_reason) == ("FAILED", "model_error")
    assert us.requests == []
    assert len(eu.requests) == 1
    assert "data_residency" in run.error


async def test_the_default_alias_is_the_embedded_model_unless_the_tenant_defines_it(
    make_platform: Any, workspace: Path
) -> None:
    local = ScriptedModel([ScriptedModel.answer("from local")], name="local")
    platform: Platform = await make_platform(local=local)
    await register(platform, agent_document(model={"default": "default"}))
    run, steps = await run_to_end(platform, workspace)
    assert (run.status, run.output) == ("SUCCEEDED", "from local")
    assert [r.model for r in local.requests] == ["smollm2-135m"]
    assert steps[0][0].model == "local/smollm2-135m"


async def test_an_unknown_alias_fails_the_run_naming_the_known_aliases(
    make_platform: Any, workspace: Path
) -> None:
    platform: Platform = await make_platform()
    await register(platform, agent_document(model={"default": "smrt"}))
    run, _ = await run_to_end(platform, workspace)
    assert (run.status, run.terminal_reason) == ("FAILED", "model_error")
    assert "model alias 'smrt' is not defined" in run.error
    assert "known aliases: default" in run.error


async def test_model_aliases_are_per_tenant(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    for tenant, provider in (("default", "alpha"), ("acme", "beta")):
        async with platform.store.transaction(tenant) as session:
            await apply_documents(
                session,
                [parse_document(model_document("smart", {"provider": provider, "model": "x"}))],
                tenant_id=tenant,
                actor="user:test",
            )
    catalog = platform.model_catalog
    assert [d.provider for d in await catalog.resolve("default", "smart")] == ["alpha"]
    assert [d.provider for d in await catalog.resolve("acme", "smart")] == ["beta"]
    with pytest.raises(NotFound):
        await catalog.resolve("other", "smart")
    aliases = await catalog.aliases("acme")
    assert {a: source for a, (_, source) in aliases.items()} == {
        "default": "platform",
        "smart": "tenant",
    }
    # A new version is seen once the tenant's cache is invalidated (or expires).
    async with platform.store.transaction("acme") as session:
        await apply_documents(
            session,
            [parse_document(model_document("smart", {"provider": "gamma", "model": "y"}))],
            tenant_id="acme",
            actor="user:test",
        )
    catalog.invalidate("acme")
    assert [d.model_name for d in await catalog.resolve("acme", "smart")] == ["gamma/y"]
    assert [d.provider for d in await catalog.resolve("default", "smart")] == ["alpha"]


async def test_a_model_test_call_stores_its_spans_answered_or_not(make_platform: Any) -> None:
    spare = ScriptedModel([ScriptedModel.answer("from spare")], name="spare")
    platform: Platform = await make_platform(down=ScriptedModel(_down, name="down"), spare=spare)
    await register(
        platform,
        model_document("smart", {"provider": "spare", "model": "s1", "region": "eu-west"}),
        model_document("broken", {"provider": "down", "model": "d1", "region": "eu-west"}),
    )
    tested = await platform.test_model("smart", tenant_id="default", principal="user:test")
    with pytest.raises(ModelAPIError):
        await platform.test_model("broken", tenant_id="default", principal="user:test")
    async with platform.store.read("default") as session:
        spans = (await session.scalars(select(SpanRow).where(SpanRow.run_id.is_(None)))).all()
    answered = [s for s in spans if s.trace_id == tested.trace_id]
    assert [(s.name, s.status) for s in answered if s.name.startswith("chat")] == [
        ("chat s1", "UNSET")
    ]
    failed = [s for s in spans if s.trace_id != tested.trace_id and s.name.startswith("chat")]
    assert [s.status for s in failed] == ["ERROR"]
