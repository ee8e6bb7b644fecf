"""``model.call`` is decided for every model the gateway calls, fallbacks included.

The default model fails with a provider error, so the gateway falls back along the agent's
``fallback`` list; a Cedar policy forbids one fallback, which must never be called, and its
denial must be stored like the default model's decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from conftest import agent_document, register
from corral.errors import ModelAPIError
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.runtime import create_run, get_run, list_steps
from corral.testing import ScriptedModel

FORBID_BACKUP = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "no-backup-model"},
    "spec": {
        "description": "The backup provider may not be used.",
        "cedar": (
            '@id("no-backup-model")\n'
            '@reason("backup/b1 is not approved for this data.")\n'
            'forbid (principal, action == Action::"model.call", resource == Model::"backup/b1");\n'
        ),
    },
}


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


def _down(_request: ModelRequest) -> FinalAnswer:
    raise ModelAPIError("upstream returned 503", provider="scripted", status_code=503)


async def _model_decisions(platform: Platform, run_id: str) -> dict[str, tuple[str, list[str]]]:
    async with platform.store.read("default") as session:
        rows = await session.execute(
            select(PolicyDecisionRow).where(
                PolicyDecisionRow.action == "model.call", PolicyDecisionRow.run_id == run_id
            )
        )
        return {r.resource: (r.decision, list(r.determining_policies)) for r in rows.scalars()}


async def _platform(make_platform: Any, fallback: list[str], **models: ScriptedModel) -> Platform:
    platform: Platform = await make_platform(scripted=ScriptedModel(_down), **models)
    await register(
        platform,
        agent_document(model={"default": "scripted/test", "fallback": fallback}),
        FORBID_BACKUP,
    )
    return platform


async def test_a_denied_fallback_is_skipped_and_the_next_allowed_one_answers(
    make_platform: Any, workspace: Path
) -> None:
    backup = ScriptedModel([ScriptedModel.answer("from backup")], name="backup")
    spare = ScriptedModel([ScriptedModel.answer("from spare")], name="spare")
    platform = await _platform(make_platform, ["backup/b1", "spare/s1"], backup=backup, spare=spare)
    run, steps = await run_to_end(platform, workspace)
    assert (run.status, run.output) == ("SUCCEEDED", "from spare")
    assert backup.requests == []  # denied by policy: never called
    assert [r.model for r in spare.requests] == ["s1"]
    assert steps[0][0].model == "spare/s1"
    assert await _model_decisions(platform, run.id) == {
        'Model::"scripted/test"': ("allow", ["model-call"]),
        'Model::"backup/b1"': ("deny", ["no-backup-model"]),
        'Model::"spare/s1"': ("allow", ["model-call"]),
    }


async def test_a_run_whose_only_fallback_is_denied_fails_as_a_model_error(
    make_platform: Any, workspace: Path
) -> None:
    backup = ScriptedModel([ScriptedModel.answer("from backup")], name="backup")
    platform = await _platform(make_platform, ["backup/b1"], backup=backup)
    run, steps = await run_to_end(platform, workspace)
    assert backup.requests == []
    assert (run.status, run.terminal_reason) == ("FAILED", "model_error")
    assert run.error.startswith("upstream returned 503")
    assert "backup/b1" in run.error  # says which fallback policy ruled out
    [(step, calls)] = steps
    assert (step.kind, step.model, calls) == ("model_error", "scripted/test", [])
    assert await _model_decisions(platform, run.id) == {
        'Model::"scripted/test"': ("allow", ["model-call"]),
        'Model::"backup/b1"': ("deny", ["no-backup-model"]),
    }


async def test_a_denied_default_model_fails_the_run_without_trying_fallbacks(
    make_platform: Any, workspace: Path
) -> None:
    backup = ScriptedModel([ScriptedModel.answer("from backup")], name="backup")
    spare = ScriptedModel([ScriptedModel.answer("from spare")], name="spare")
    platform: Platform = await make_platform(backup=backup, spare=spare)
    await register(
        platform,
        agent_document(model={"default": "backup/b1", "fallback": ["spare/s1"]}),
        FORBID_BACKUP,
    )
    run, steps = await run_to_end(platform, workspace)
    assert (run.status, run.terminal_reason) == ("FAILED", "model_denied")
    assert "backup/b1 is not approved" in run.error
    assert (backup.requests, spare.requests) == ([], [])
    assert steps[0][0].kind == "model_error"
    assert await _model_decisions(platform, run.id) == {
        'Model::"backup/b1"': ("deny", ["no-backup-model"]),
    }
