from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from conftest import agent_document
from corral.runtime import TERMINAL_STATUSES
from corral.testing import ScriptedModel

FS_TOOLS = ["fs.list_dir", "fs.read_file", "fs.search_text"]


def resolved(path: Path) -> str:
    return str(path.resolve())


async def apply(client: httpx.AsyncClient, *documents: dict[str, Any], **body: Any) -> Any:
    response = await client.post("/v1/apply", json={"documents": list(documents), **body})
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_end(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(200):  # at most ~10 s
        response = await client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200
        run = response.json()
        if run["status"] in TERMINAL_STATUSES:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_apply_creates_then_is_unchanged(api) -> None:
    client = await api()
    [created] = await apply(client, agent_document())
    assert {k: created[k] for k in ("kind", "name", "action", "version")} == {
        "kind": "Agent",
        "name": "repo-analyst",
        "action": "created",
        "version": "0.1.0",
    }
    [again] = await apply(client, agent_document())
    assert (again["action"], again["version"], again["digest"]) == (
        "unchanged",
        "0.1.0",
        created["digest"],
    )
    [preview] = await apply(client, agent_document(risk_tier="high"), dry_run=True)
    assert (preview["action"], preview["version"]) == ("updated", "0.1.1")
    assert "+  risk_tier: high" in preview["diff"]
    versions = (await client.get("/v1/agents/repo-analyst/versions")).json()
    assert [v["version"] for v in versions] == ["0.1.0"]


async def test_invalid_document_is_422_naming_the_field_and_applies_nothing(api) -> None:
    client = await api()
    bad = agent_document(name="bad-agent", limits={"max_iterations": 0})
    response = await client.post(
        "/v1/apply", json={"documents": [agent_document(name="good-agent"), bad]}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_contract"
    [issue] = body["issues"]
    assert (issue["document"], issue["path"]) == (1, "spec.limits.max_iterations")
    assert "greater than or equal to 1" in issue["message"]
    assert "spec.limits.max_iterations" in body["message"]
    # All or nothing: the valid document was not applied either.
    assert (await client.get("/v1/agents/good-agent")).status_code == 404


async def test_duplicate_in_one_apply_is_409(api) -> None:
    client = await api()
    response = await client.post(
        "/v1/apply", json={"documents": [agent_document(), agent_document()]}
    )
    assert (response.status_code, response.json()["code"]) == (409, "conflict")
    assert (await client.get("/v1/agents")).json()["items"] == []


async def test_apply_warns_of_unmatched_tools_and_strict_refuses_them(api) -> None:
    client = await api()
    typo = agent_document(tools={"allowed": ["fs.list_dir", "fs.raed_file"]})
    response = await client.post("/v1/apply", json={"documents": [typo], "strict": True})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_contract")
    [issue] = response.json()["issues"]
    assert (issue["document"], issue["path"]) == (0, "spec.tools.allowed[1]")
    assert "did you mean 'fs.read_file'?" in issue["message"]
    assert (await client.get("/v1/agents/repo-analyst")).status_code == 404
    [applied] = await apply(client, typo)
    assert applied["action"] == "created"
    assert applied["warnings"] == [
        "spec.tools.allowed[1]: 'fs.raed_file' matches no registered tool; "
        "did you mean 'fs.read_file'?"
    ]
    single = await client.post(
        "/v1/agents", params={"strict": "true", "dry_run": "true"}, json=typo
    )
    assert single.status_code == 422


async def test_agents_list_pages_with_a_cursor(api) -> None:
    client = await api()
    await apply(client, agent_document("bravo"), agent_document("alpha"), agent_document("charlie"))
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"after": cursor} if cursor else {})
        page = (await client.get("/v1/agents", params=params)).json()
        pages += 1
        seen += [item["name"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert cursor == seen[-1]
        assert pages < 10
    assert seen == ["alpha", "bravo", "charlie"]
    everything = (await client.get("/v1/agents")).json()
    assert ([a["name"] for a in everything["items"]], everything["next"]) == (seen, None)
    assert (await client.get("/v1/agents", params={"limit": 0})).status_code == 422


async def test_agent_detail_versions_and_not_found(api) -> None:
    client = await api()
    await apply(client, agent_document("narrow", tools={"allowed": ["fs.list_dir"]}))
    await apply(client, agent_document())
    [updated] = await apply(client, agent_document(owner="another-team"))

    agent = (await client.get("/v1/agents/repo-analyst")).json()
    assert agent["name"] == "repo-analyst"
    assert (agent["latest_version"], agent["status"], agent["owner"]) == (
        "0.1.1",
        "active",
        "another-team",
    )
    assert agent["digest"] == updated["digest"]
    assert agent["allowed_tools"] == FS_TOOLS
    narrow = (await client.get("/v1/agents/narrow")).json()
    assert narrow["allowed_tools"] == ["fs.list_dir"]

    versions = (await client.get("/v1/agents/repo-analyst/versions")).json()
    assert [v["version"] for v in versions] == ["0.1.1", "0.1.0"]
    assert versions[0]["document"]["spec"]["owner"] == "another-team"
    assert versions[1]["document"]["spec"]["owner"] == "platform-team"
    assert versions[0]["digest"] == updated["digest"]

    response = await client.get("/v1/agents/nope")
    assert response.status_code == 404
    body = response.json()
    assert (body["code"], body["kind"], body["name"]) == ("agent_not_found", "agent", "nope")
    assert body["known"] == ["narrow", "repo-analyst"]
    assert (await client.get("/v1/agents/nope/versions")).status_code == 404


async def test_tools_lists_the_builtins(api) -> None:
    client = await api()
    page = (await client.get("/v1/tools")).json()
    assert [t["name"] for t in page["items"]] == FS_TOOLS
    read = page["items"][1]
    assert (read["type"], read["side_effect"]) == ("builtin", "read")
    assert read["input_schema"]["required"] == ["path"]
    assert read["digest"].startswith("sha256:")


async def test_run_end_to_end(api, workspace: Path) -> None:
    model = ScriptedModel(
        [ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("A demo package.")]
    )
    client = await api(scripted=model)
    await apply(client, agent_document())
    response = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": "What is this?", "workspace": str(workspace)},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["status"], created["agent_version"], created["model"]) == (
        "QUEUED",
        "0.1.0",
        "scripted/test",
    )
    assert created["workspace"] == resolved(workspace)
    run_id = created["id"]

    run = await wait_for_end(client, run_id)
    assert (run["status"], run["output"], run["terminal_reason"]) == (
        "SUCCEEDED",
        "A demo package.",
        "final_answer",
    )
    assert (run["step_count"], run["iterations"], run["tool_call_count"]) == (2, 2, 1)

    steps = (await client.get(f"/v1/runs/{run_id}/steps")).json()
    assert [s["kind"] for s in steps] == ["tool_calls", "final_answer"]
    [call] = steps[0]["tool_calls"]
    assert (call["tool_name"], call["status"], call["output"]) == (
        "fs.list_dir",
        "COMPLETED",
        "README.md\npkg/",
    )
    assert call["idempotency_key"] == f"{run_id}:0:0"
    later = (await client.get(f"/v1/runs/{run_id}/steps", params={"after": 0})).json()
    assert [s["index"] for s in later] == [1]

    spans = (await client.get(f"/v1/runs/{run_id}/spans")).json()
    assert {s["trace_id"] for s in spans} == {run["trace_id"]}
    assert sorted(s["name"] for s in spans) == [
        "chat test",
        "chat test",
        "context.build",
        "context.build",
        "execute_tool fs.list_dir",
        "invoke_agent repo-analyst",
        "policy.evaluate",
        "policy.evaluate",
    ]

    succeeded = (await client.get("/v1/runs", params={"status": "SUCCEEDED"})).json()
    assert [r["id"] for r in succeeded["items"]] == [run_id]
    queued = (await client.get("/v1/runs", params={"status": "QUEUED"})).json()
    assert queued["items"] == []
    by_agent = (await client.get("/v1/runs", params={"agent": "other"})).json()
    assert by_agent["items"] == []
    bogus = await client.get("/v1/runs", params={"status": "DONE"})
    assert bogus.status_code == 422  # the schema lists the statuses
    assert "SUCCEEDED" in bogus.json()["message"]

    events = (await client.get("/v1/audit/events", params={"run_id": run_id})).json()["items"]
    assert [e["action"] for e in events] == [
        "run.created",
        "run.leased",
        "tool.call",
        "run.finished",
    ]
    assert all(e["run_id"] == run_id and e["trace_id"] == run["trace_id"] for e in events)
    assert events[0]["actor"] == "user:local-admin"
    assert events[-1]["outcome"] == "succeeded"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)

    verification = (await client.get("/v1/audit/verify")).json()
    assert verification["ok"] is True
    assert verification["first_bad_seq"] is None
    assert verification["events_checked"] >= 4 + 3 + 1  # this run, the builtins, the agent


async def test_audit_events_page_by_seq(api) -> None:
    client = await api()
    await apply(client, agent_document("alpha"), agent_document("bravo"))
    first = (await client.get("/v1/audit/events", params={"limit": 2})).json()
    assert [e["seq"] for e in first["items"]] == [1, 2]
    assert first["next"] == "2"
    rest = (await client.get("/v1/audit/events", params={"after": first["next"]})).json()
    # Event 1 is the test client's key (key.created); the two applies add five more.
    assert [e["seq"] for e in rest["items"]] == [3, 4, 5, 6]
    assert rest["items"][0]["prev_hash"] == first["items"][-1]["hash"]
    assert rest["next"] is None


async def test_a_run_carries_its_session_id_and_a_bad_one_is_422(api) -> None:
    client = await api(scripted=ScriptedModel([]))
    await apply(client, agent_document())
    created = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": "x", "session_id": "chat:42.a_b-c"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["session_id"] == "chat:42.a_b-c"
    read = (await client.get(f"/v1/runs/{created.json()['id']}")).json()
    assert read["session_id"] == "chat:42.a_b-c"
    without = await client.post("/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x"})
    assert without.json()["session_id"] is None
    for bad in ("", "has space", "x" * 129, "semi;colon"):
        response = await client.post(
            "/v1/agents/repo-analyst/runs",
            json={"stage": "dev", "task": "x", "session_id": bad},
        )
        assert response.status_code == 422, bad
        assert any(
            "session_id" in issue and "1 to 128 characters" in issue
            for issue in response.json()["issues"]
        ), response.json()


async def test_run_requests_that_cannot_be_honoured(api, tmp_path: Path) -> None:
    client = await api(scripted=ScriptedModel([]))
    await apply(client, agent_document())

    missing = tmp_path / "does-not-exist"
    response = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": "x", "workspace": str(missing)},
    )
    assert response.status_code == 400
    assert (response.json()["code"], str(missing) in response.json()["message"]) == (
        "invalid_request",
        True,
    )

    relative = await client.post(
        "/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x", "workspace": "src"}
    )
    assert relative.status_code == 400
    assert "absolute" in relative.json()["message"]

    unknown = await client.post("/v1/agents/nope/runs", json={"stage": "dev", "task": "x"})
    assert unknown.status_code == 404
    assert (unknown.json()["code"], unknown.json()["known"]) == (
        "agent_not_found",
        ["repo-analyst"],
    )

    no_task = await client.post(
        "/v1/agents/repo-analyst/runs", json={"stage": "dev", "workspace": "/tmp"}
    )
    assert no_task.status_code == 422
    assert no_task.json()["code"] == "invalid_request"
    assert any("task" in issue for issue in no_task.json()["issues"])

    extra = await client.post(
        "/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x", "tsk": "y"}
    )
    assert extra.status_code == 422

    model = await client.post(
        "/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x", "model": "openai/gpt-4o"}
    )
    assert model.status_code == 400
    assert "not allowed" in model.json()["message"]

    assert (await client.get("/v1/runs")).json()["items"] == []
    assert (await client.get("/v1/runs/run_nope")).status_code == 404
    assert (await client.get("/v1/runs/run_nope/steps")).status_code == 404


async def test_retired_agent_run_is_403(api) -> None:
    client = await api(scripted=ScriptedModel([]))
    await apply(client, agent_document(status="retired"))
    response = await client.post("/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x"})
    assert (response.status_code, response.json()["code"]) == (403, "agent_retired")


async def test_openapi_and_health(api) -> None:
    client = await api(scripted=ScriptedModel([]))
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path, method in [
        ("/v1/apply", "post"),
        ("/v1/agents", "get"),
        ("/v1/agents/{name}", "get"),
        ("/v1/agents/{name}/versions", "get"),
        ("/v1/agents/{name}/runs", "post"),
        ("/v1/tools", "get"),
        ("/v1/runs", "get"),
        ("/v1/runs/{run_id}", "get"),
        ("/v1/runs/{run_id}/steps", "get"),
        ("/v1/runs/{run_id}/spans", "get"),
        ("/v1/audit/events", "get"),
        ("/v1/audit/verify", "get"),
        ("/healthz", "get"),
    ]:
        assert method in paths[path], path
    assert "201" in paths["/v1/agents/{name}/runs"]["post"]["responses"]

    health = await client.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["store"] in {"sqlite", "postgresql"}
    assert "scripted" in body["providers"]


async def test_agents_list_describes_each_agent_like_the_detail_route(api) -> None:
    client = await api()
    await apply(
        client,
        agent_document("narrow", tools={"allowed": ["fs.list_dir"]}, risk_tier="high"),
        agent_document("wide"),
    )
    listed = {a["name"]: a for a in (await client.get("/v1/agents")).json()["items"]}
    for name in ("narrow", "wide"):
        detail = (await client.get(f"/v1/agents/{name}")).json()
        assert listed[name] == detail
    assert listed["narrow"]["allowed_tools"] == ["fs.list_dir"]
    assert (listed["narrow"]["risk_tier"], listed["wide"]["owner"]) == ("high", "platform-team")
    assert listed["wide"]["description"] == "Answers questions about a codebase."
    assert listed["wide"]["digest"].startswith("sha256:")
