from conftest import agent_document, register
from corral.runtime import create_run, get_run, list_steps
from corral.testing import ScriptedModel


async def test_scripted_run_reaches_final_answer(make_platform, workspace):
    model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("42")])
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="What?",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    async with platform.store.transaction("default") as session:
        done = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
    assert (done.status, done.output, done.terminal_reason) == ("SUCCEEDED", "42", "final_answer")
    assert [s.kind for s, _ in steps] == ["tool_calls", "final_answer"]
    assert steps[0][1][0].output == "README.md\npkg/"
