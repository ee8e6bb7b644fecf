"""Evals end to end on the real runtime with a ScriptedModel, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select

from conftest import agent_document, register
from corral.contracts import EvalSuite, Tool, parse_document
from corral.costs import ModelCallRow
from corral.errors import ModelAPIError
from corral.evals import (
    apply_suites,
    compare_versions,
    gateway_judge,
    get_eval,
    grade_eval,
    inspect_log,
    latest_eval,
    start_eval,
)
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.registry import get_agent_version
from corral.runtime import get_run, list_steps
from corral.settings import Settings
from corral.store._base import Base
from corral.testing import ScriptedModel

TENANT = "default"


def suite_document(name: str = "qa", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent": "repo-analyst",
        "graders": [{"type": "policy"}],
        "cases": [
            {
                "name": "lists",
                "task": "List the files.",
                "graders": [
                    {
                        "type": "trajectory",
                        "calls": [{"tool": "fs.list_dir", "arguments": {"path": "."}}],
                    },
                    {"type": "contains", "values": ["core.py"]},
                ],
            },
            {
                "name": "answers",
                "task": "What is the answer?",
                "expected": "42",
                "graders": [{"type": "exact"}],
            },
        ],
    }
    body.update(spec)
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "EvalSuite",
        "metadata": {"name": name},
        "spec": body,
    }


def analyst(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
    """Lists the workspace once when asked to list, then answers; says its instructions' number."""
    task = next(m.content for m in request.messages if m.role == "user")
    listed = any(m.role == "tool" for m in request.messages)
    if "List" in task and not listed:
        return [ScriptedModel.call("fs.list_dir", path=".")]
    if "List" in task:
        return FinalAnswer("README.md and pkg/core.py")
    system = request.messages[0].content
    return FinalAnswer("41" if "Say 41" in system else "42")


async def apply_suite(platform: Platform, document: dict[str, Any]) -> None:
    suite = parse_document(document)
    assert isinstance(suite, EvalSuite)
    async with platform.store.transaction(TENANT) as session:
        await apply_suites(session, [suite], tenant_id=TENANT, actor="user:test")


async def run_eval(platform: Platform, suite: str = "qa", **options: Any):
    row = await start_eval(
        platform.store,
        tenant_id=TENANT,
        suite=suite,
        agent=options.pop("agent", None),
        version=options.pop("version", None),
        requested_by="user:test",
        requester_roles=["builder"],
        workspaces=platform.workspaces,
        governance=platform.governance,
        **options,
    )
    await platform.worker.run_until_idle()
    judge = gateway_judge(
        platform.models,
        TENANT,
        governance=platform.governance,
        store=platform.store,
        principal="user:test",
        roles=["builder"],
    )
    return await grade_eval(
        platform.store, row.id, tenant_id=TENANT, actor="user:test", judge=judge
    )


async def test_an_eval_runs_each_case_through_the_runtime_with_results_per_grader(
    make_platform, workspace: Path
) -> None:
    platform = await make_platform(scripted=ScriptedModel(analyst))
    await register(platform, agent_document())
    await apply_suite(platform, suite_document())
    report = await run_eval(platform, repeat=2, workspace=str(workspace))

    assert report.run.status == "completed" and report.run.passed is True
    assert [(c.case_name, c.repeat_index, c.passed) for c in report.cases] == [
        ("answers", 0, True),
        ("answers", 1, True),
        ("lists", 0, True),
        ("lists", 1, True),
    ]
    lists = report.cases[2]
    assert [(g.grader_name, g.passed) for g in report.graders[lists.id]] == [
        ("policy", True),
        ("trajectory", True),
        ("contains", True),
    ]
    assert lists.output == "README.md and pkg/core.py" and lists.latency_seconds is not None
    async with platform.store.read(TENANT) as session:
        run = await get_run(session, lists.run_id, tenant_id=TENANT)
        _, version = await get_agent_version(session, "repo-analyst", tenant_id=TENANT)
        gate = await latest_eval(session, "repo-analyst", version.digest, "qa", tenant_id=TENANT)
        other = await latest_eval(
            session, "repo-analyst", "sha256:" + "0" * 64, "qa", tenant_id=TENANT
        )
    # A real run, in the eval stage, of the exact version the eval is bound to.
    assert (run.stage, run.agent_version, run.status) == ("eval", version.version, "SUCCEEDED")
    assert report.run.agent_digest == version.digest
    assert gate is not None and other is None
    assert (gate.eval_id, gate.passed, gate.success_rate, gate.policy_violations) == (
        report.run.id,
        True,
        1.0,
        0,
    )
    # Graded once: grading again changes nothing.
    again = await grade_eval(platform.store, report.run.id, tenant_id=TENANT, actor="user:test")
    assert sum(len(v) for v in again.graders.values()) == 2 * 2 + 2 * 3


async def test_an_eval_whose_case_run_errored_is_inconclusive_and_gates_nothing(
    make_platform, workspace: Path
) -> None:
    def provider_down(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
        task = next(m.content for m in request.messages if m.role == "user")
        if "answer" in task:
            raise ModelAPIError("upstream returned 503", provider="scripted", status_code=503)
        return analyst(request)

    platform = await make_platform(scripted=ScriptedModel(provider_down))
    await register(platform, agent_document())
    # No threshold a failed case could break: only the errored run makes the eval fail.
    await apply_suite(platform, suite_document(thresholds={"min_success_rate": 0.0}))
    report = await run_eval(platform, workspace=str(workspace))

    assert report.run.status == "completed" and report.run.passed is False
    assert report.summary is not None
    assert (report.summary.errored_runs, report.summary.case_runs) == (1, 2)
    async with platform.store.read(TENANT) as session:
        _, version = await get_agent_version(session, "repo-analyst", tenant_id=TENANT)
        gate = await latest_eval(session, "repo-analyst", version.digest, "qa", tenant_id=TENANT)
    assert gate is not None and (gate.passed, gate.errored_runs) == (False, 1)


async def test_a_changed_agent_needs_a_new_eval_and_compare_finds_the_regression(
    make_platform, workspace: Path
) -> None:
    platform = await make_platform(scripted=ScriptedModel(analyst))
    await register(platform, agent_document())
    await apply_suite(platform, suite_document())
    first = await run_eval(platform, workspace=str(workspace), repeat=3)
    await register(platform, agent_document(instructions="Say 41."))
    async with platform.store.read(TENANT) as session:
        _, v2 = await get_agent_version(session, "repo-analyst", tenant_id=TENANT)
        assert await latest_eval(session, "repo-analyst", v2.digest, "qa", tenant_id=TENANT) is None
    second = await run_eval(platform, workspace=str(workspace), repeat=3)
    assert (first.run.passed, second.run.passed) == (True, False)
    assert second.run.agent_version == v2.version != first.run.agent_version

    async with platform.store.read(TENANT) as session:
        comparison = await compare_versions(
            session, "repo-analyst", first.run.agent_version, v2.version, "qa", tenant_id=TENANT
        )
    by_case = {c.case: c for c in comparison.cases}
    assert by_case["answers"].regression and not by_case["lists"].regression
    assert (by_case["answers"].a_pass_rate, by_case["answers"].b_pass_rate) == (1.0, 0.0)
    rate = comparison.success_rate
    assert rate is not None and rate.delta == -0.5 and rate.low <= -0.5 <= rate.high < 0


class Notes:
    """A ``side_effect: write`` tool that writes a file into the workspace, counting calls."""

    def __init__(self) -> None:
        self.executions: list[str] = []

    def builtin(self) -> BuiltinTool:
        contract = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": "notes.write", "version": "1.0.0"},
                "spec": {
                    "description": "Write a note file into the workspace.",
                    "type": "builtin",
                    "side_effect": "write",
                    "input_schema": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
            }
        )
        return BuiltinTool(contract, self.run)

    async def run(self, arguments: dict[str, Any], workspace: Path | None, **_: Any) -> str:
        assert workspace is not None
        self.executions.append(str(workspace))
        (workspace / "note.txt").write_text(arguments["text"])
        return "written"


@pytest.fixture
async def notes_platform(settings: Settings) -> AsyncIterator[tuple[Platform, Notes]]:
    notes = Notes()

    def writer(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
        if any(m.role == "tool" for m in request.messages):
            return FinalAnswer("done")
        return [ScriptedModel.call("notes.write", text="hello")]

    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(writer)},
        builtins={"notes.write": notes.builtin()},
    )
    await platform.start()
    try:
        await register(platform, agent_document(tools={"allowed": ["fs.*", "notes.write"]}))
        yield platform, notes
    finally:
        await platform.close()


async def test_eval_runs_never_execute_side_effecting_tools(
    notes_platform, workspace: Path
) -> None:
    platform, notes = notes_platform
    cases = [{"name": "writes", "task": "Write a note.", "graders": [{"type": "policy"}]}]
    await apply_suite(platform, suite_document(cases=cases))
    report = await run_eval(platform, workspace=str(workspace))

    assert notes.executions == [] and not (workspace / "note.txt").exists()
    [case] = report.cases
    assert (case.passed, case.policy_violations) == (False, 1)
    assert report.run.passed is False
    async with platform.store.read(TENANT) as session:
        [(_, calls)] = (await list_steps(session, case.run_id, tenant_id=TENANT))[:1]
    assert [(c.tool_name, str(c.status)) for c in calls] == [("notes.write", "DENIED")]


async def test_a_sandbox_case_runs_side_effects_inside_its_own_copy(
    notes_platform, workspace: Path
) -> None:
    platform, notes = notes_platform
    cases = [
        {
            "name": "writes",
            "task": "Write a note.",
            "fixture": str(workspace),
            "files": {"extra/input.txt": "data"},
            "graders": [
                {"type": "policy"},
                {"type": "trajectory", "calls": [{"tool": "notes.write"}]},
            ],
        }
    ]
    await apply_suite(platform, suite_document(cases=cases))
    report = await run_eval(platform)

    [case] = report.cases
    assert case.passed is True and case.policy_violations == 0
    [sandbox] = notes.executions
    assert Path(sandbox).is_relative_to(platform.workspaces.builtin_root(TENANT))
    assert (Path(sandbox) / "note.txt").read_text() == "hello"
    assert (Path(sandbox) / "pkg" / "core.py").exists()  # the fixture, copied
    assert (Path(sandbox) / "extra" / "input.txt").read_text() == "data"
    assert not (workspace / "note.txt").exists()  # the fixture itself is untouched
    async with platform.store.read(TENANT) as session:
        run = await get_run(session, case.run_id, tenant_id=TENANT)
    assert run.stage == "eval-sandbox"


async def test_a_case_whose_run_cannot_start_is_graded_failed(
    make_platform, tmp_path: Path
) -> None:
    platform = await make_platform(scripted=ScriptedModel(analyst))
    await register(platform, agent_document())
    await apply_suite(platform, suite_document())
    report = await run_eval(platform, workspace=str(tmp_path / "missing"))
    assert report.run.status == "completed" and report.run.passed is False
    assert all(c.run_id is None and "not a directory" in (c.error or "") for c in report.cases)
    assert all(not g.passed for rows in report.graders.values() for g in rows)


async def test_the_inspect_export_has_one_sample_per_case_run(make_platform, workspace) -> None:
    platform = await make_platform(scripted=ScriptedModel(analyst))
    await register(platform, agent_document())
    await apply_suite(platform, suite_document())
    report = await run_eval(platform, workspace=str(workspace), repeat=2)
    async with platform.store.read(TENANT) as session:
        report = await get_eval(session, report.run.id, tenant_id=TENANT)
    suite = EvalSuite.model_validate(parse_document(suite_document()).model_dump(by_alias=True))
    log = inspect_log(report, suite)
    assert (log["version"], log["status"]) == (2, "success")
    assert [(s["id"], s["epoch"]) for s in log["samples"]] == [
        ("answers", 1),
        ("answers", 2),
        ("lists", 1),
        ("lists", 2),
    ]
    assert log["samples"][0]["scores"]["exact"]["value"] == "C"
    assert {s["name"] for s in log["results"]["scores"]} == {
        "policy",
        "exact",
        "trajectory",
        "contains",
    }


async def test_the_eval_tables_match_migration_0014(make_platform) -> None:
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [d for d in found if "eval_" in d]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_a_judge_grades_through_the_model_gateway_and_its_cost_is_counted(
    make_platform, workspace: Path
) -> None:
    def model(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
        if "Rubric:" in request.messages[-1].content:  # the judge's call
            return FinalAnswer('{"score": 0.8, "reason": "names the answer"}')
        return FinalAnswer("42")

    platform = await make_platform(scripted=ScriptedModel(model))
    judge_alias = {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": "judge"},
        "spec": {
            "deployments": [
                {
                    "provider": "scripted",
                    "model": "judge",
                    "prices": {"input_usd_per_mtok": "1000", "output_usd_per_mtok": "1000"},
                }
            ]
        },
    }
    await register(platform, agent_document(), judge_alias)
    graders = [{"type": "judge", "rubric": "The answer is 42.", "model": "judge"}]
    cases = [{"name": "answers", "task": "What is the answer?", "graders": graders}]
    await apply_suite(platform, suite_document(cases=cases))
    report = await run_eval(platform, workspace=str(workspace))

    [case] = report.cases
    [_policy, judged] = report.graders[case.id]
    assert (judged.grader_type, judged.passed, judged.score) == ("judge", True, 0.8), judged.detail
    assert judged.detail == "names the answer"
    assert judged.cost_usd > 0 and case.judge_cost_usd == judged.cost_usd
    assert report.summary is not None and report.summary.judge_cost_usd == judged.cost_usd


async def test_the_judges_model_call_is_decided_by_policy_and_written_to_the_ledger(
    make_platform, workspace: Path
) -> None:
    def model(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
        if "Rubric:" in request.messages[-1].content:
            return FinalAnswer('{"score": 1, "reason": "fine"}')
        return FinalAnswer("42")

    platform = await make_platform(scripted=ScriptedModel(model))
    graders = [{"type": "judge", "rubric": "The answer is 42.", "model": "scripted/judge"}]
    cases = [{"name": "answers", "task": "What is the answer?", "graders": graders}]
    await register(platform, agent_document())
    await apply_suite(platform, suite_document(cases=cases))

    allowed = await run_eval(platform, workspace=str(workspace))
    [judged] = [g for g in allowed.graders[allowed.cases[0].id] if g.grader_type == "judge"]
    assert judged.passed is True, judged.detail
    async with platform.store.read(TENANT) as session:
        ledger = (
            await session.scalars(
                select(ModelCallRow).where(
                    ModelCallRow.model == "judge", ModelCallRow.principal == "user:test"
                )
            )
        ).all()
        decided = (
            await session.scalars(
                select(PolicyDecisionRow).where(
                    PolicyDecisionRow.action == "model.call",
                    PolicyDecisionRow.resource == 'Model::"scripted/judge"',
                )
            )
        ).all()
    assert len(ledger) == 1 and ledger[0].run_id is None
    assert [d.decision for d in decided] == ["allow"]

    forbid = {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "no-judge"},
        "spec": {
            "description": "The judge model may not be called.",
            "cedar": '@id("no-judge")\n@reason("The judge model is off.")\nforbid (principal, '
            'action == Action::"model.call", resource == Model::"scripted/judge");',
        },
    }
    await register(platform, forbid)
    platform.governance.invalidate(TENANT)
    denied = await run_eval(platform, workspace=str(workspace))
    [judged] = [g for g in denied.graders[denied.cases[0].id] if g.grader_type == "judge"]
    assert judged.passed is False and "The judge model is off." in judged.detail, judged.detail
    assert denied.run.passed is False
    async with platform.store.read(TENANT) as session:
        decisions = (
            await session.scalars(
                select(PolicyDecisionRow.decision).where(
                    PolicyDecisionRow.action == "model.call",
                    PolicyDecisionRow.resource == 'Model::"scripted/judge"',
                )
            )
        ).all()
        calls = (
            await session.scalars(select(ModelCallRow).where(ModelCallRow.model == "judge"))
        ).all()
    assert sorted(decisions) == ["allow", "deny"] and len(calls) == 1
