"""``/v1/evals``: apply a suite, run it, grade it, compare, export to Inspect; permissions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import PrincipalKeys, agent_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.testing import ScriptedModel

SUITE = {
    "apiVersion": "corral.dev/v1",
    "kind": "EvalSuite",
    "metadata": {"name": "qa"},
    "spec": {
        "agent": "repo-analyst",
        "graders": [{"type": "policy"}],
        "cases": [
            {
                "name": "lists",
                "task": "List the files.",
                "graders": [{"type": "trajectory", "calls": [{"tool": "fs.list_dir"}]}],
            },
            {
                "name": "answers",
                "task": "Answer.",
                "expected": "42",
                "graders": [{"type": "exact"}],
            },
        ],
    },
}


def model(request: ModelRequest) -> list[ToolCall] | FinalAnswer:
    task = next(m.content for m in request.messages if m.role == "user")
    if "List" in task and not any(m.role == "tool" for m in request.messages):
        return [ScriptedModel.call("fs.list_dir", path=".")]
    return FinalAnswer("42")


async def finished(client: Any, eval_id: str) -> dict[str, Any]:
    for _ in range(600):  # the app's worker runs the case runs
        response = await client.post(f"/v1/evals/{eval_id}/grade", json={})
        assert response.status_code == 200, response.text
        if response.json()["status"] == "completed":
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"eval {eval_id} did not complete")


async def test_an_eval_over_rest_from_apply_to_inspect_export(
    api, workspace: Path, tmp_path
) -> None:
    client = await api(scripted=ScriptedModel(model))
    applied = await client.post("/v1/apply", json={"documents": [agent_document(), SUITE]})
    assert applied.status_code == 200, applied.text
    assert [(r["kind"], r["action"]) for r in applied.json()] == [
        ("Agent", "created"),
        ("EvalSuite", "created"),
    ]
    again = await client.post("/v1/apply", json={"documents": [SUITE]})
    assert again.json()[0]["action"] == "unchanged"

    started = await client.post(
        "/v1/evals", json={"suite": "qa", "workspace": str(workspace), "repeat": 2}
    )
    assert started.status_code == 201, started.text
    assert [c["status"] for c in started.json()["cases"]] == ["pending"] * 4
    result = await finished(client, started.json()["id"])
    assert result["passed"] is True and result["summary"]["success_rate"] == 1.0
    assert {(c["case"], tuple(g["name"] for g in c["graders"])) for c in result["cases"]} == {
        ("answers", ("policy", "exact")),
        ("lists", ("policy", "trajectory")),
    }
    gate = await client.get(
        "/v1/evals/gate",
        params={"agent": "repo-analyst", "digest": result["agent_digest"], "suite": "qa"},
    )
    assert gate.json()["id"] == result["id"]
    listed = await client.get("/v1/evals", params={"agent": "repo-analyst"})
    assert [e["id"] for e in listed.json()] == [result["id"]]

    log = (await client.get(f"/v1/evals/{result['id']}/inspect")).json()
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(log))
    inspect_log = pytest.importorskip("inspect_ai.log")
    # The async reader: the sync one, called under a running loop, applies nest_asyncio, which
    # patches asyncio.run for the rest of the process (its loops are then never closed).
    read = await inspect_log.read_eval_log_async(str(path))
    assert (read.status, read.eval.task, len(read.samples)) == ("success", "corral/qa", 4)
    assert {s.scores["policy"].value for s in read.samples} == {"C"}


async def test_evals_need_permissions_and_stay_in_their_tenant(api, settings, workspace) -> None:
    settings.governance.roles["user:vic"] = ["viewer"]
    client = await api(scripted=ScriptedModel(model))
    await client.post("/v1/apply", json={"documents": [agent_document(), SUITE]})
    as_viewer = {"X-Corral-Principal": "user:vic"}
    refused = await client.post("/v1/evals", json={"suite": "qa"}, headers=as_viewer)
    assert refused.status_code == 403
    started = await client.post("/v1/evals", json={"suite": "qa", "workspace": str(workspace)})
    eval_id = started.json()["id"]
    assert (
        await client.post(f"/v1/evals/{eval_id}/grade", json={}, headers=as_viewer)
    ).status_code == 403
    assert (await client.get(f"/v1/evals/{eval_id}", headers=as_viewer)).status_code == 200

    created = await client.post("/v1/tenants", json={"id": "acme", "display_name": "Acme"})
    assert created.status_code == 201, created.text
    settings.governance.roles["user:eve"] = ["builder"]
    eve_key = await PrincipalKeys(client.auth.platform, "acme").key("user:eve")
    eve = {"Authorization": f"Bearer {eve_key}"}
    assert (await client.get(f"/v1/evals/{eval_id}", headers=eve)).status_code == 404
    assert (
        await client.post(f"/v1/evals/{eval_id}/grade", json={}, headers=eve)
    ).status_code == 404
    assert (await client.post("/v1/evals", json={"suite": "qa"}, headers=eve)).status_code == 404
    await finished(client, eval_id)


@pytest.mark.parametrize("stage", ["eval", "eval-sandbox"])
async def test_callers_cannot_run_in_the_eval_stages(api, workspace: Path, stage: str) -> None:
    client = await api(scripted=ScriptedModel(model))
    applied = await client.post("/v1/apply", json={"documents": [agent_document()]})
    assert applied.status_code == 200, applied.text
    body = {"task": "Answer.", "stage": stage, "workspace": str(workspace)}
    refused = await client.post("/v1/agents/repo-analyst/runs", json=body)
    assert refused.status_code == 422, refused.text
    assert f"stage {stage!r} is reserved for eval runs" in refused.json()["message"]
    assert "`corral eval run SUITE --agent AGENT@VERSION`" in refused.json()["message"]
    listed = await client.get("/v1/runs")
    assert listed.json()["items"] == []
    allowed = await client.post("/v1/agents/repo-analyst/runs", json={**body, "stage": "dev"})
    assert allowed.status_code == 201, allowed.text
