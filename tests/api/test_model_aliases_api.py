"""``/v1/model-aliases``: list (paginated), describe, test call; unknown aliases are 404s."""

from __future__ import annotations

from typing import Any

from corral.testing import ScriptedModel


def _model(name: str, provider: str) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"deployments": [{"provider": provider, "model": "m", "region": "eu-west"}]},
    }


async def test_aliases_are_listed_page_by_page_and_described(api: Any) -> None:
    client = await api(scripted=ScriptedModel([ScriptedModel.answer("ok")], name="scripted"))
    applied = await client.post(
        "/v1/apply", json={"documents": [_model("fast", "scripted"), _model("smart", "other")]}
    )
    assert applied.status_code == 200, applied.text
    names: list[str] = []
    after = None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = (await client.get("/v1/model-aliases", params=params)).json()
        names += [item["name"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert names == ["default", "fast", "smart"]
    fast = (await client.get("/v1/model-aliases/fast")).json()
    assert fast["source"] == "tenant"
    assert fast["deployments"][0] | {"breaker": "?"} == {
        "name": "fast#0",
        "provider": "scripted",
        "model": "m",
        "region": "eu-west",
        "weight": 1,
        "base_url": None,
        "api_key": None,
        "max_retries": 2,
        "timeout_seconds": None,
        "breaker": "?",
    }


async def test_a_test_call_reports_the_deployment_tokens_and_latency(api: Any) -> None:
    client = await api(scripted=ScriptedModel([ScriptedModel.answer("ok")], name="scripted"))
    await client.post("/v1/apply", json={"documents": [_model("fast", "scripted")]})
    response = await client.post("/v1/model-aliases/fast/test")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["deployment"], body["model"], body["region"], body["answer"]) == (
        "fast#0",
        "scripted/m",
        "eu-west",
        "ok",
    )
    assert body["latency_ms"] >= 0
    assert body["attempts"] == []
    assert len(body["trace_id"]) == 32 and int(body["trace_id"], 16) > 0


async def test_unknown_aliases_are_404s_naming_the_known_ones(api: Any) -> None:
    client = await api()
    for response in (
        await client.get("/v1/model-aliases/smrt"),
        await client.post("/v1/model-aliases/smrt/test"),
    ):
        assert response.status_code == 404
        body = response.json()
        assert body["code"] == "model_alias_not_found"
        assert body["known"] == ["default"]


async def test_only_a_platform_admin_may_point_a_deployment_at_its_own_endpoint(
    api: Any, settings: Any
) -> None:
    # A tenant-supplied base_url makes Corral connect to an address of the tenant's choosing
    # from inside the operator's network (cloud metadata, Corral's own API): an SSRF vector.
    settings.governance.roles["user:bob"] = ["builder"]
    client = await api(scripted=ScriptedModel([ScriptedModel.answer("ok")], name="scripted"))
    inward = _model("inward", "openai")
    inward["spec"]["deployments"][0]["base_url"] = "http://169.254.169.254/latest"
    as_builder = {"X-Corral-Principal": "user:bob"}

    refused = await client.post("/v1/apply", json={"documents": [inward]}, headers=as_builder)
    plain = await client.post(
        "/v1/apply", json={"documents": [_model("plain", "openai")]}, headers=as_builder
    )
    listed = (await client.get("/v1/model-aliases", headers=as_builder)).json()
    by_admin = await client.post("/v1/apply", json={"documents": [inward]})

    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "model_endpoint_forbidden"
    assert "spec.deployments[0].base_url" in refused.json()["message"]
    assert plain.status_code == 200, plain.text  # the platform's endpoint for the provider
    assert [item["name"] for item in listed["items"]] == ["default", "plain"]
    assert by_admin.status_code == 200, by_admin.text
