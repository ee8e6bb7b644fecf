"""The Prompt kind: versions, history and diff, and agents referencing a prompt version."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import agent_document, register
from corral.contracts import parse_document
from corral.errors import InvalidContract, NotFound
from corral.registry import (
    apply_documents,
    get_agent_version,
    list_prompt_versions,
    prompt_diff,
)
from corral.runtime import create_run, get_run
from corral.testing import ScriptedModel
from tenancy._world import live_world


def prompt_document(name: str, content: str, version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if version is not None:
        metadata["version"] = version
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Prompt",
        "metadata": metadata,
        "spec": {"description": "Triage instructions.", "content": content},
    }


def referencing_agent(ref: str) -> dict[str, Any]:
    document = agent_document(instructions_ref=ref)
    del document["spec"]["instructions"]
    return document


async def test_an_agent_runs_with_the_referenced_prompt_version(make_platform, workspace):
    model = ScriptedModel([ScriptedModel.answer("ok")])
    platform = await make_platform(scripted=model)
    await register(platform, prompt_document("triage", "Be terse. v1"))
    await register(platform, prompt_document("triage", "Be terse and cite. v2"))
    await register(platform, referencing_agent("prompts/triage@0.1.0"))
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session, tenant_id="default", agent_name="repo-analyst", task="Hi", requested_by="u:t"
        )
    await platform.worker.run_until_idle()
    async with platform.store.read("default") as session:
        assert (await get_run(session, run.id, tenant_id="default")).status == "SUCCEEDED"
    system = model.requests[0].messages[0].content
    assert system.startswith("Be terse. v1")
    assert "v2" not in system


async def test_pointing_at_another_prompt_version_makes_a_new_agent_version(make_platform):
    platform = await make_platform()
    await register(
        platform,
        prompt_document("triage", "First wording."),
        referencing_agent("prompts/triage@0.1.0"),  # same apply: the prompt is resolved first
    )
    await register(platform, referencing_agent("prompts/triage@0.1.0"))  # unchanged
    async with platform.store.read("default") as session:
        _, first = await get_agent_version(session, "repo-analyst", tenant_id="default")
    assert first.version == "0.1.0"
    assert first.document["spec"]["instructions"] == "First wording."
    assert first.document["spec"]["instructions_ref"] == "prompts/triage@0.1.0"

    await register(platform, prompt_document("triage", "Second wording."))
    await register(platform, referencing_agent("prompts/triage@0.1.1"))
    async with platform.store.read("default") as session:
        _, second = await get_agent_version(session, "repo-analyst", tenant_id="default")
        history = await list_prompt_versions(session, "triage", tenant_id="default")
        diff = await prompt_diff(session, "triage", "0.1.0", tenant_id="default")
    assert second.version == "0.1.1"
    assert second.digest != first.digest
    assert second.document["spec"]["instructions"] == "Second wording."
    assert [v.version for v in history] == ["0.1.1", "0.1.0"]
    assert history[0].digest != history[1].digest
    assert "-First wording.\n+Second wording.\n" in diff


async def test_an_unknown_reference_names_the_fix(make_platform):
    platform = await make_platform()
    await register(platform, prompt_document("triage", "Words."))
    with pytest.raises(InvalidContract) as raised:
        await register(platform, referencing_agent("prompts/triage@2.0.0"))
    message = raised.value.issues[0].message
    assert "prompts/triage@2.0.0" in message and "0.1.0" in message
    assert "apply a Prompt document" in message
    with pytest.raises(InvalidContract, match="no prompt 'missing' exists"):
        await register(platform, referencing_agent("prompts/missing@1.0.0"))


async def test_instructions_and_a_reference_are_mutually_exclusive(make_platform):
    platform = await make_platform()
    await register(platform, prompt_document("triage", "Words."))
    both = agent_document(instructions_ref="prompts/triage@0.1.0")
    with pytest.raises(InvalidContract, match="mutually exclusive"):
        await register(platform, both)
    neither = agent_document()
    del neither["spec"]["instructions"]
    with pytest.raises(InvalidContract, match="instructions_ref"):
        parse_document(neither)


async def test_a_reference_resolves_in_the_applying_tenant_only(settings):
    async with live_world(settings) as world:
        await world.tenant("acme")
        async with world.platform.store.transaction("acme") as session:
            await apply_documents(
                session,
                [parse_document(prompt_document("secret-sauce", "Acme's own words."))],
                tenant_id="acme",
                actor="user:acme",
            )
        response = await world.as_(
            "POST",
            "/v1/apply",
            json={"documents": [referencing_agent("prompts/secret-sauce@0.1.0")]},
        )
        assert response.status_code == 422, response.text
        assert "no prompt 'secret-sauce' exists" in response.text
        listed = await world.as_("GET", "/v1/prompts")
        assert listed.json()["items"] == []
        other = await world.as_("GET", "/v1/prompts/secret-sauce/versions")
        assert other.status_code == 404
        own = await world.as_("GET", "/v1/prompts", tenant="acme", principal="user:acme")
        assert [p["name"] for p in own.json()["items"]] == ["secret-sauce"]


async def test_prompts_over_rest(settings):
    async with live_world(settings) as world:
        documents = [prompt_document("triage", "a\nb\n"), prompt_document("triage", "a\nc\n")]
        for document in documents:
            response = await world.as_("POST", "/v1/apply", json={"documents": [document]})
            assert response.status_code == 200, response.text
        versions = await world.as_("GET", "/v1/prompts/triage/versions")
        assert [v["content"] for v in versions.json()] == ["a\nc\n", "a\nb\n"]
        diff = await world.as_("GET", "/v1/prompts/triage/diff", params={"from": "0.1.0"})
        assert diff.json()["diff"].splitlines()[2:] == ["@@ -1,2 +1,2 @@", " a", "-b", "+c"]
        missing = await world.as_("GET", "/v1/prompts/triage/diff", params={"from": "9.9.9"})
        assert missing.status_code == 404 and "versions: 0.1.1, 0.1.0" in missing.text


async def test_get_prompt_version_not_found(make_platform):
    platform = await make_platform()
    async with platform.store.read("default") as session:
        with pytest.raises(NotFound, match="corral prompts list"):
            await list_prompt_versions(session, "nope", tenant_id="default")
