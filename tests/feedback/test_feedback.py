"""User feedback on runs: recorded with its principal and an audit event, tenant-scoped."""

from __future__ import annotations

from decimal import Decimal

from conftest import agent_document, register
from corral.feedback import feedback_metrics
from corral.runtime import create_run
from corral.testing import ScriptedModel
from tenancy._world import World, live_world


async def _finished_run(world: World, tenant: str = "default", version: str = "0.1.0") -> str:
    async with world.platform.store.transaction(tenant) as session:
        run = await create_run(
            session,
            tenant_id=tenant,
            agent_name="repo-analyst",
            task="What?",
            requested_by="user:alice",
            version=version,
        )
    await world.platform.worker.run_until_idle()
    return run.id


async def test_a_viewer_rates_a_run_and_the_rating_is_audited(settings):
    async with live_world(settings, scripted=ScriptedModel([ScriptedModel.answer("42")])) as world:
        await register(world.platform, agent_document())
        run_id = await _finished_run(world)
        body = {"score": -1, "label": "wrong_answer", "comment": "It is 41."}
        posted = await world.as_(
            "POST", f"/v1/runs/{run_id}/feedback", json=body, principal="user:v", roles=["viewer"]
        )
        assert posted.status_code == 201, posted.text
        assert posted.json()["principal"] == "user:v"
        assert (posted.json()["agent_name"], posted.json()["agent_version"]) == (
            "repo-analyst",
            "0.1.0",
        )
        listed = await world.as_(
            "GET", f"/v1/runs/{run_id}/feedback", principal="user:v", roles=["viewer"]
        )
        assert [(f["score"], f["label"], f["comment"]) for f in listed.json()] == [
            (-1, "wrong_answer", "It is 41.")
        ]
        events = await world.as_("GET", "/v1/audit/events", params={"action": "run.feedback"})
        feedback_events = [e for e in events.json()["items"] if e["action"] == "run.feedback"]
        assert [(e["actor"], e["subject"]) for e in feedback_events] == [
            ("user:v", f"run:{run_id}")
        ]


async def test_scores_outside_minus_one_to_one_are_refused(settings):
    async with live_world(settings, scripted=ScriptedModel([ScriptedModel.answer("42")])) as world:
        await register(world.platform, agent_document())
        run_id = await _finished_run(world)
        for score in (5, 2, -2):
            response = await world.as_("POST", f"/v1/runs/{run_id}/feedback", json={"score": score})
            assert response.status_code == 422, response.text
        listed = await world.as_("GET", f"/v1/runs/{run_id}/feedback")
        assert listed.json() == []


async def test_another_tenants_run_cannot_be_rated_or_read(settings):
    async with live_world(settings, scripted=ScriptedModel([ScriptedModel.answer("42")])) as world:
        await register(world.platform, agent_document())
        run_id = await _finished_run(world)
        await world.as_("POST", f"/v1/runs/{run_id}/feedback", json={"score": 1})
        await world.tenant("acme")
        posted = await world.as_(
            "POST", f"/v1/runs/{run_id}/feedback", json={"score": -1}, tenant="acme"
        )
        read = await world.as_("GET", f"/v1/runs/{run_id}/feedback", tenant="acme")
        assert (posted.status_code, read.status_code) == (404, 404)
        listed = await world.as_("GET", f"/v1/runs/{run_id}/feedback")
        assert [f["score"] for f in listed.json()] == [1]


async def test_an_agent_identity_may_not_rate_runs(settings):
    async with live_world(settings, scripted=ScriptedModel([ScriptedModel.answer("42")])) as world:
        await register(world.platform, agent_document())
        run_id = await _finished_run(world)
        response = await world.as_(
            "POST",
            f"/v1/runs/{run_id}/feedback",
            json={"score": 1},
            principal="agent:repo-analyst",
            roles=["agent"],
        )
        assert response.status_code == 403, response.text


async def test_metrics_per_agent_version(settings):
    script = ScriptedModel(lambda request: ScriptedModel.answer("ok"))
    async with live_world(settings, scripted=script) as world:
        await register(world.platform, agent_document())
        await register(world.platform, agent_document(description="Second version."))
        scores = {"0.1.0": [1, 1, -1], "0.1.1": [0, -1]}
        for version, given in scores.items():
            for score in given:
                run_id = await _finished_run(world, version=version)
                response = await world.as_(
                    "POST", f"/v1/runs/{run_id}/feedback", json={"score": score}
                )
                assert response.status_code == 201, response.text
        async with world.platform.store.read("default") as session:
            metrics = await feedback_metrics(session, "repo-analyst", tenant_id="default")
            other = await feedback_metrics(session, "repo-analyst", tenant_id="acme")
    assert {v: (m.count, m.mean_score) for v, m in metrics.items()} == {
        "0.1.0": (3, Decimal(1) / Decimal(3)),
        "0.1.1": (2, Decimal("-0.5")),
    }
    assert other == {}


async def test_runs_users_dislike_are_no_success_for_experiments(settings):
    from corral.feedback import FeedbackSuccess, record_feedback
    from corral.releases import FinishedRun

    answers = [ScriptedModel.answer("42"), ScriptedModel.answer("42"), ScriptedModel.answer("42")]
    async with live_world(settings, scripted=ScriptedModel(answers)) as world:
        await register(world.platform, agent_document())
        liked, disliked, unrated = [await _finished_run(world) for _ in range(3)]
        async with world.platform.store.transaction("default") as session:
            for run_id, scores in ((liked, [1, -1, 1]), (disliked, [-1, 0])):
                for index, score in enumerate(scores):
                    await record_feedback(
                        session,
                        run_id,
                        tenant_id="default",
                        principal=f"user:u{index}",
                        score=score,
                    )
        finished = [
            FinishedRun(run_id, "SUCCEEDED", Decimal(0), 1.0)
            for run_id in (liked, disliked, unrated)
        ]
        finished.append(FinishedRun("run_failed", "FAILED", Decimal(0), 1.0))

        def successes(connection):
            return FeedbackSuccess().successes(connection, finished)

        found = await world.platform.store.read_sync(successes, "default")
    assert found == {liked, unrated}
