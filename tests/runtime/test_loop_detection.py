"""Loop detection (repeated tool calls, LOOP_DETECTED), degenerate answers, cited sources."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import update

from conftest import agent_document, register
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES, RunStatus, create_run, get_run, list_steps
from corral.runtime._tables import RunRow
from corral.testing import ScriptedModel

LIST_ROOT = ScriptedModel.call("fs.list_dir", path=".")


async def start(platform: Platform, workspace: Path) -> str:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="What is in this repository?",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    return run.id


async def load(platform: Platform, run_id: str) -> tuple[Any, list[Any]]:
    async with platform.store.transaction("default") as session:
        run = await get_run(session, run_id, tenant_id="default")
        steps = await list_steps(session, run_id, tenant_id="default")
    return run, steps


GOOD_ANSWER = "The repository holds README.md and a pkg package."


async def run_to_the_end(
    make_platform: Any, workspace: Path, script: Any, *, iterations: int
) -> tuple[ScriptedModel, Any, list[Any]]:
    """Run the agent on ``script`` until idle; the model, the run and its steps."""
    model = ScriptedModel(script)
    platform = await make_platform(scripted=model)
    await register(platform, agent_document(limits={"max_iterations": iterations}))
    run_id = await start(platform, workspace)
    await platform.worker.run_until_idle()
    run, steps = await load(platform, run_id)
    return model, run, steps


def tool_texts(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "tool"]


async def test_loop_detected_status_is_terminal() -> None:
    assert RunStatus.LOOP_DETECTED in TERMINAL_STATUSES


async def test_a_repeated_call_gets_feedback_then_the_run_ends_loop_detected(
    make_platform, workspace
) -> None:
    model = ScriptedModel(lambda _request: ToolCall("c", "fs.list_dir", {"path": "."}))
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    run_id = await start(platform, workspace)
    await platform.worker.run_until_idle()

    run, steps = await load(platform, run_id)
    assert run.status == "LOOP_DETECTED"
    assert run.terminal_reason == "max_repeated_calls:3:fs.list_dir"
    assert "3 times" in run.error and "'fs.list_dir'" in run.error
    # Step 0 ran the call; steps 1 and 2 were repeats answered with feedback (not executed);
    # the third repeat (step 3) ended the run and was neither executed nor recorded.
    assert [[c.status for c in calls] for _, calls in steps] == [
        ["COMPLETED"],
        ["REPEATED"],
        ["REPEATED"],
        [],
    ]
    assert "README.md" in steps[0][1][0].output
    assert steps[1][1][0].output.startswith("You already called fs.list_dir with these")
    assert steps[3][0].decision["skipped_tool_calls"][0]["name"] == "fs.list_dir"
    assert len(model.requests) == 4
    # The model saw the feedback as the repeat's result, the first result still above it.
    [first, feedback] = tool_texts(model.requests[2])
    assert "README.md" in first and "at step 0; its result is above" in feedback
    assert (run.tool_call_count, run.iterations) == (3, 4)
    # After each repeat the repeated tool rests for one model call.
    offered = [sorted(t.name for t in r.tools) for r in model.requests]
    assert "fs.list_dir" in offered[0] and "fs.list_dir" in offered[1]
    assert "fs.list_dir" not in offered[2] and "fs.list_dir" not in offered[3]
    assert "fs.read_file" in offered[2]


async def test_different_arguments_are_not_repeats(make_platform, workspace) -> None:
    script = [
        LIST_ROOT,
        ScriptedModel.call("fs.list_dir", path="pkg"),
        ScriptedModel.call("fs.read_file", path="pkg/core.py"),
        LIST_ROOT,  # a repeat: feedback
        ScriptedModel.answer("It has pkg/core.py."),
    ]
    platform = await make_platform(scripted=ScriptedModel(script))
    await register(platform, agent_document(limits={"max_repeated_calls": 2}))
    run, steps = await load(platform, r := await start(platform, workspace))
    await platform.worker.run_until_idle()
    run, steps = await load(platform, r)
    assert run.status == "SUCCEEDED"
    assert [c.status for _, calls in steps for c in calls] == [
        "COMPLETED",
        "COMPLETED",
        "COMPLETED",
        "REPEATED",
    ]


async def test_the_repeat_count_survives_a_resume_on_another_worker(
    make_platform, workspace
) -> None:
    died = asyncio.Event()

    async def decide(request: ModelRequest) -> ToolCall:
        if len(tool_texts(request)) == 2 and not died.is_set():
            died.set()
            raise asyncio.CancelledError  # the first worker dies in its model call of step 2
        return ToolCall("c", "fs.list_dir", {"path": "."})

    model = ScriptedModel(decide)
    first = await make_platform(scripted=model)
    await register(first, agent_document())
    run_id = await start(first, workspace)
    await first.worker.run_until_idle()
    dead, steps = await load(first, run_id)
    assert (dead.status, [c.status for _, calls in steps for c in calls]) == (
        "RUNNING",
        ["COMPLETED", "REPEATED"],
    )

    async with first.store.transaction("default") as session:  # the dead worker's lease ends
        await session.execute(
            update(RunRow).where(RunRow.id == run_id).values(lease_expires_at=dead.created_at)
        )
    second = await make_platform(scripted=model)  # another process: its own executor
    await second.worker.run_until_idle()

    run, steps = await load(second, run_id)
    # The repeated tool still rests in the first model call after the resume.
    assert "fs.list_dir" not in [t.name for t in model.requests[3].tools]
    # One repeat before the crash, one after: the third ends the run (a count kept only in
    # memory would have let the run go on, or executed the call again).
    assert (run.status, run.step_count) == ("LOOP_DETECTED", 4)
    assert [c.status for _, calls in steps for c in calls] == ["COMPLETED", "REPEATED", "REPEATED"]


async def test_a_degenerate_answer_is_refused_then_a_good_one_accepted(
    make_platform, workspace
) -> None:
    script = [
        LIST_ROOT,
        ScriptedModel.answer("Your final answer is: " * 20),
        ScriptedModel.answer(" <short answer> "),  # a template copied verbatim
        ScriptedModel.answer(GOOD_ANSWER),
    ]
    model, run, steps = await run_to_the_end(make_platform, workspace, script, iterations=4)
    assert (run.status, run.output) == ("SUCCEEDED", GOOD_ANSWER)
    assert [s.kind for s, _ in steps] == [
        "tool_calls",
        "invalid_decision",
        "invalid_decision",
        "final_answer",
    ]
    assert "repeats 'your final answer is'" in steps[1][0].error
    assert "answer concisely" in model.requests[2].messages[-1].content
    assert "'<short answer>' is a placeholder" in steps[2][0].error
    assert run.iterations == 4  # the refused answers counted


async def test_an_answer_echoing_the_repeat_note_is_refused(make_platform, workspace) -> None:
    def script(request: ModelRequest) -> ToolCall | FinalAnswer:
        texts = tool_texts(request)
        if len(texts) < 2:
            return LIST_ROOT  # the second one is answered with the repeat note
        if request.messages[-1].role == "tool":
            return FinalAnswer(texts[-1])  # a small model copies the last message it saw
        return FinalAnswer(GOOD_ANSWER)

    model, run, steps = await run_to_the_end(make_platform, workspace, script, iterations=5)
    assert (run.status, run.output) == ("SUCCEEDED", GOOD_ANSWER)
    assert [s.kind for s, _ in steps] == [
        "tool_calls",
        "tool_calls",
        "invalid_decision",
        "final_answer",
    ]
    assert "You already called fs.list_dir" in model.requests[2].messages[-1].content
    assert "repeats Corral's note about a repeated tool call" in steps[2][0].error


async def test_cited_sources_are_offered_checked_and_shown(api, workspace) -> None:
    script = [
        ScriptedModel.call("fs.read_file", path="README.md"),
        ScriptedModel.call("fs.list_dir", path="pkg"),
        FinalAnswer("See the secrets.", ("secrets.txt",)),  # never returned by a tool
        FinalAnswer("A demo; the answer is in pkg/core.py.", ("pkg/core.py", "README.md")),
    ]
    model = ScriptedModel(script)
    client = await api(scripted=model)
    document = agent_document(answer={"cite_sources": True})
    assert (await client.post("/v1/apply", json={"documents": [document]})).status_code == 200
    response = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": "What is this?", "workspace": str(workspace)},
    )
    run_id = response.json()["id"]
    for _ in range(400):
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL_STATUSES:
            break
        await asyncio.sleep(0.05)

    assert run["status"] == "SUCCEEDED", run
    assert run["sources"] == ["pkg/core.py", "README.md"]
    assert run["output"] == (
        "A demo; the answer is in pkg/core.py.\n\nSources: pkg/core.py, README.md"
    )
    # What the model could cite: nothing at first, then exactly the paths its calls returned.
    assert [r.answer_sources for r in model.requests] == [
        (),
        ("README.md",),
        ("README.md", "pkg/core.py"),
        ("README.md", "pkg/core.py"),
    ]
    steps = (await client.get(f"/v1/runs/{run_id}/steps")).json()
    assert [s["kind"] for s in steps] == [
        "tool_calls",
        "tool_calls",
        "invalid_decision",
        "final_answer",
    ]
    assert "'secrets.txt', which no tool call of yours returned" in steps[2]["error"]
    assert steps[3]["decision"]["sources"] == ["pkg/core.py", "README.md"]


async def test_an_agent_that_does_not_cite_gets_no_sources(make_platform, workspace) -> None:
    model = ScriptedModel([LIST_ROOT, ScriptedModel.answer("A demo.")])
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    run_id = await start(platform, workspace)
    await platform.worker.run_until_idle()
    run, _ = await load(platform, run_id)
    assert run.output == "A demo."
    assert [r.answer_sources for r in model.requests] == [None, None]
