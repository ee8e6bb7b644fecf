"""Every error answer has Corral's shape, and no input gives a 5xx (what a fuzzer found)."""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from conftest import agent_document
from corral.api._errors import install_error_handlers, status_for
from corral.errors import CorralError, LeaseLost, MissingTenantScope
from corral.settings import SecretsSettings, Settings
from corral.testing import ScriptedModel

TOO_BIG = 2**63  # one more than a signed 64-bit column holds


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with a secrets master key (the secret routes need one)."""
    key = SecretStr(base64.b64encode(os.urandom(32)).decode())
    return settings.model_copy(update={"secrets": SecretsSettings(master_key=key)})


def assert_corral_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["code"], str) and isinstance(body["message"], str), body
    return body


async def _run(client: httpx.AsyncClient, workspace) -> str:
    await client.post("/v1/apply", json={"documents": [agent_document()]})
    response = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"task": "hi", "workspace": str(workspace), "stage": "dev"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_cursors_beyond_64_bits_are_refused_not_a_500(api, workspace) -> None:
    client = await api(scripted=ScriptedModel(lambda _r: ScriptedModel.answer("ok")))
    run_id = await _run(client, workspace)
    for url in (
        f"/v1/audit/events?after={TOO_BIG}",
        f"/v1/runs/{run_id}/steps?after={TOO_BIG}",
        f"/v1/runs/{run_id}/events?after={TOO_BIG}",
    ):
        body = assert_corral_error(await client.get(url), 422)
        assert "after" in str(body["message"])
    # The largest cursor that fits is fine.
    assert (await client.get(f"/v1/audit/events?after={TOO_BIG - 1}")).status_code == 200
    # The SSE resume header is checked before the stream starts, not mid-response.
    for header in (str(TOO_BIG), "9" * 5000, "\uff11\uff12".encode(), "-3", "null"):
        response = await client.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": header})
        body = assert_corral_error(response, 422)
        assert "last-event-id" in str(body["message"]).lower()


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("PUT", "/v1/secrets/api-token", b'{"value": "abc\\ud800"}'),
        ("POST", "/v1/role-grants", b'{"subject": "user:\\udc00x", "role": "viewer"}'),
        ("POST", "/v1/keys", b'{"name": "k", "roles": ["viewer"], "\\ud83d": 1}'),
        ("POST", "/v1/role-grants", b'{"subject": "user:\xed\xa0\x80", "role": "viewer"}'),
    ],
)
async def test_a_lone_surrogate_is_400_naming_the_field(api, method, url, body) -> None:
    client = await api()
    response = await client.request(
        method, url, content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_corral_error(response, 400)
    assert error["code"] == "invalid_text"
    assert "surrogate" in str(error["message"])


async def test_a_surrogate_pair_is_text_and_is_stored(api) -> None:
    client = await api()
    response = await client.put(
        "/v1/secrets/emoji",
        content=b'{"value": "\\ud83d\\ude00 and \\\\ud800 spelled out"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_a_deeply_nested_body_gets_corral_error_shape(api) -> None:
    client = await api()
    deep = b"[" * 100_000 + b"]" * 100_000
    response = await client.post(
        "/v1/apply", content=deep, headers={"Content-Type": "application/json"}
    )
    body = assert_corral_error(response, 400)
    assert "nests too deeply" in str(body["message"])
    broken = await client.post(
        "/v1/apply", content=b'{"documents": [', headers={"Content-Type": "application/json"}
    )
    assert_corral_error(broken, 422)


async def test_unknown_path_and_method_get_corral_errors_and_a_complete_allow(api) -> None:
    client = await api()
    assert_corral_error(await client.get("/v1/nothing-here"), 404)
    # PUT and DELETE are two routes of one path: Allow must name both.
    response = await client.post("/v1/secrets/x", json={})
    body = assert_corral_error(response, 405)
    assert body["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"PUT", "DELETE"}
    keys = await client.patch("/v1/keys")
    assert set(keys.headers["Allow"].split(", ")) == {"GET", "POST"}


async def test_openapi_declares_bearer_auth_and_every_error_shape(api) -> None:
    client = await api()
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    assert {"code", "message"} <= set(schema["components"]["schemas"]["ErrorOut"]["required"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            public = operation["x-corral-permission"] == "public"
            assert (operation.get("security") is None) == public, (method, path)
            codes = {int(c) for c in operation["responses"] if int(c) >= 400}
            expected = {400, 413, 422} | (set() if public else {401, 403, 429})
            assert expected <= codes, (method, path, codes)
            for code in codes:
                if (method, path, code) == ("get", "/readyz", 503):
                    continue  # not an error: the readiness report (ReadinessOut)
                content = operation["responses"][str(code)]["content"]
                assert content["application/json"]["schema"] == error_ref, (method, path, code)
    # A service account's key needs a role, an agent key none: the schema says so.
    key = schema["components"]["schemas"]["KeyCreate"]
    assert {"required": ["roles"], "properties": {"roles": {"minItems": 1}}} in key["anyOf"]
    run = schema["paths"]["/v1/agents/{name}/runs"]["post"]["responses"]
    assert {"404", "409", "423"} <= set(run)
    assert "HTTPValidationError" not in json.dumps(schema)


@pytest.mark.parametrize(
    "error",
    [
        MissingTenantScope("RunRow of tenant 'team-b' written in a session of 'team-a'"),
        LeaseLost("run_secret", worker_id="host-7:123", lease_epoch=4),
    ],
)
async def test_internal_errors_are_500_and_keep_their_message_in_the_log(
    error: CorralError, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://corral"
    ) as client:
        response = await client.get("/boom")
    body = assert_corral_error(response, 500)
    assert body["code"] == error.code
    assert error.message not in response.text
    for secret in ("team-b", "run_secret", "host-7"):
        assert secret not in response.text
    assert error.message in caplog.text  # the server log has it
    assert status_for(error) == 500


def test_missing_tenant_scope_is_a_corral_error_and_still_a_runtime_error() -> None:
    from corral.store import MissingTenantScope as from_the_store

    assert from_the_store is MissingTenantScope
    assert issubclass(MissingTenantScope, CorralError)
    assert issubclass(MissingTenantScope, RuntimeError)
