"""OpenAPI import: operations become http tools; an agent calls one end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from _http_upstream import PETSTORE, Upstream, serve_upstream
from pydantic import SecretStr
from typer.testing import CliRunner

from conftest import CliServer, agent_document, register
from corral.api import create_app
from corral.cli import app as cli
from corral.contracts import Tool
from corral.errors import InvalidContract
from corral.gateway.models import ModelRequest, ToolCall
from corral.gateway.tools._openapi import import_openapi, list_operations, tool_name_for
from corral.platform import Platform
from corral.runtime import create_run, get_run, list_steps
from corral.settings import SecretsSettings, Settings
from corral.testing import ScriptedModel


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    yield from serve_upstream()


def petstore(**options: Any) -> dict[str, Tool]:
    tools = import_openapi(PETSTORE, source="petstore.yaml", **options)
    return {tool.metadata.name: tool for tool in tools}


def spec_of(tool: Tool) -> dict[str, Any]:
    return tool.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- mapping ------------------------------------------------------------------------------------


def test_operations_become_tools_with_names_effects_and_urls() -> None:
    tools = petstore(name_prefix="petstore.", base_url="http://127.0.0.1:8080/v1/")
    assert sorted(tools) == [
        "petstore.create_pet",
        "petstore.delete_pet",
        "petstore.get_pet_by_id",
        "petstore.list_pets",
        "petstore.replace_pet",
    ]
    effects = {name: (t.spec.side_effect, t.spec.idempotent) for name, t in tools.items()}
    assert effects == {
        "petstore.create_pet": ("write", False),
        "petstore.delete_pet": ("destructive", True),
        "petstore.get_pet_by_id": ("read", False),
        "petstore.list_pets": ("read", False),
        "petstore.replace_pet": ("write", True),
    }
    listing = tools["petstore.list_pets"]
    assert listing.spec.type == "http"
    assert listing.spec.description == (
        "List pets\n\nPets in the store, optionally filtered by tag."
    )
    assert listing.metadata.labels == {"corral.dev/openapi-operation": "listPets"}
    assert spec_of(listing)["http"]["url"] == "http://127.0.0.1:8080/v1/pets"
    assert tools["petstore.delete_pet"].spec.description == "DELETE /pets/{petId}"


def test_path_query_and_header_parameters_map_to_arguments() -> None:
    tools = petstore(base_url="http://127.0.0.1:8080/v1")
    listing = spec_of(tools["list_pets"])
    assert listing["input_schema"]["properties"] == {
        "limit": {
            "description": "How many at most.",
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
        },
        "tag": {"type": "array", "items": {"type": "string"}},
    }
    assert listing["input_schema"]["required"] == []
    assert listing["input_schema"]["additionalProperties"] is False
    assert listing["http"]["parameters"] == {"limit": {"in": "query"}, "tag": {"in": "query"}}
    by_id = spec_of(tools["get_pet_by_id"])
    # The path-level $ref'd parameter is merged in; Authorization is never a model argument.
    assert by_id["input_schema"]["properties"] == {
        "petId": {"type": "string"},
        "X-Trace": {"type": "string"},
    }
    assert by_id["input_schema"]["required"] == ["petId"]
    assert by_id["http"]["parameters"] == {"petId": {"in": "path"}, "X-Trace": {"in": "header"}}
    assert by_id["http"]["url"] == "http://127.0.0.1:8080/v1/pets/{petId}"


def test_a_json_body_maps_to_arguments_with_refs_resolved() -> None:
    create = spec_of(petstore(base_url="http://h.example/v1")["create_pet"])
    schema = create["input_schema"]
    assert schema["properties"]["name"] == {"type": "string", "minLength": 1}
    # OpenAPI 3.0 nullable becomes a JSON Schema null type.
    assert schema["properties"]["tag"] == {"type": ["string", "null"]}
    # A recursive component stays a reference into $defs.
    assert schema["properties"]["parent"] == {"$ref": "#/$defs/Pet"}
    assert schema["$defs"]["Pet"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Pet"}
    assert schema["required"] == ["name"]
    assert create["http"]["parameters"] == {
        "name": {"in": "body"},
        "tag": {"in": "body"},
        "parent": {"in": "body"},
    }
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid({"name": "rex", "parent": {"id": 1, "children": [{"id": 2}]}})
    assert not validator.is_valid({"name": "rex", "parent": {"children": [{"id": "x"}]}})
    assert not validator.is_valid({"name": "rex", "colour": "red"})
    # A body that is not an object with properties is one argument, the whole body.
    replace = spec_of(petstore(base_url="http://h.example/v1")["replace_pet"])
    assert replace["input_schema"]["properties"]["body"] == {
        "type": "array",
        "items": {"type": "string"},
    }
    assert replace["http"]["parameters"]["body"] == {"in": "body_root"}


def test_a_body_field_named_like_a_parameter_keeps_the_body_whole() -> None:
    document = yaml.safe_load(PETSTORE)
    document["paths"]["/pets/{petId}"]["patch"] = {
        "operationId": "patchPet",
        "requestBody": {
            "required": True,
            "content": {
                "application/merge-patch+json": {
                    "schema": {"type": "object", "properties": {"petId": {"type": "string"}}}
                }
            },
        },
    }
    [tool] = import_openapi(
        json.dumps(document), operations=["patchPet"], base_url="http://h.example"
    )
    spec = spec_of(tool)
    assert sorted(spec["input_schema"]["properties"]) == ["body", "petId"]
    assert spec["input_schema"]["required"] == ["petId", "body"]
    assert spec["http"]["parameters"]["body"] == {"in": "body_root"}


def test_selected_operations_servers_headers_and_allowlist() -> None:
    [tool] = import_openapi(
        PETSTORE,
        operations=["getPetById"],
        name_prefix="pets_",
        allow_hosts=["127.0.0.1"],
        headers={"X-Api-Key": "${secret:pets-key}"},
        timeout_seconds=5,
    )
    http = spec_of(tool)["http"]
    # The server URL's variables take their defaults.
    assert http["url"] == "http://127.0.0.1/v1/pets/{petId}"
    assert (http["allow_hosts"], http["headers"]) == (
        ["127.0.0.1"],
        {"X-Api-Key": "${secret:pets-key}"},
    )
    assert (tool.metadata.name, tool.spec.timeout_seconds) == ("pets_get_pet_by_id", 5)


def test_json_documents_import_like_yaml() -> None:
    as_json = json.dumps(yaml.safe_load(PETSTORE), indent="\t")
    assert import_openapi(as_json, base_url="http://h.example") == import_openapi(
        PETSTORE, base_url="http://h.example"
    )
    assert [o.operation_id for o in list_operations(as_json)] == [
        "listPets",
        "createPet",
        "getPetById",
        "replacePet",
        "deletePet",
    ]


@pytest.mark.parametrize(
    ("operation_id", "name"),
    [
        ("getPetById", "get_pet_by_id"),
        ("HTTPStatus", "http_status"),
        ("list-pets.v2", "list_pets_v2"),
        ("get_/pets/{id}", "get_pets_id"),
    ],
)
def test_tool_names_from_operation_ids(operation_id: str, name: str) -> None:
    assert tool_name_for(operation_id) == name


# --- bad input ----------------------------------------------------------------------------------


def issues_of(text: str, **options: Any) -> list[tuple[str, int | None, str]]:
    with pytest.raises(InvalidContract) as caught:
        import_openapi(text, source="spec.yaml", **options)
    assert all(issue.file == "spec.yaml" for issue in caught.value.issues)
    return [(issue.path, issue.line, issue.message) for issue in caught.value.issues]


def test_malformed_yaml_fails_with_its_line() -> None:
    [(path, line, message)] = issues_of("openapi: 3.0.0\npaths:\n  /x: [\n")
    assert (path, line) == ("", 4)
    assert message.startswith("invalid YAML/JSON")


def test_swagger_2_is_refused_with_the_fix() -> None:
    [(path, line, message)] = issues_of("swagger: '2.0'\npaths: {}\n")
    assert (path, line) == ("/openapi", 1)  # a missing field: the document's first line
    assert "convert Swagger 2.0 documents first" in message


def test_an_unknown_operation_lists_the_known_ones() -> None:
    [(path, _line, message)] = issues_of(PETSTORE, operations=["listPets", "getPets"])
    assert path == "/paths"
    assert "no operation 'getPets' in spec.yaml" in message
    assert "createPet, deletePet, getPetById, listPets, replacePet" in message


def test_external_refs_fail_with_pointer_and_line() -> None:
    text = PETSTORE.replace('$ref: "#/components/schemas/NewPet"', "$ref: common.yaml#/NewPet")
    [(path, line, message)] = issues_of(text, operations=["createPet"], base_url="http://h")
    assert path == "/paths/~1pets/post/requestBody/content/application~1json/schema/$ref"
    assert line == text.splitlines().index("            schema: {$ref: common.yaml#/NewPet}") + 1
    assert "only local $refs" in message


def test_a_dangling_ref_and_a_missing_server_are_reported_together() -> None:
    text = PETSTORE.replace('#/components/schemas/Pet"}', '#/components/schemas/Gone"}', 1)
    text = text.replace("servers:\n  - url: http://{host}/v1", "x-servers:\n  - url: http://h")
    issues = issues_of(text, operations=["createPet", "listPets"])
    messages = [message for _path, _line, message in issues]
    assert "$ref '#/components/schemas/Gone' points at nothing" in messages
    assert messages.count("the document names no server; pass --base-url (base_url=...)") == 2


def test_unsupported_bodies_and_undeclared_path_parameters() -> None:
    document = yaml.safe_load(PETSTORE)
    document["paths"]["/upload/{id}"] = {
        "post": {
            "operationId": "upload",
            "requestBody": {"required": True, "content": {"multipart/form-data": {}}},
        }
    }
    issues = issues_of(json.dumps(document), operations=["upload"], base_url="http://h")
    line = json.dumps(document).count("\n") + 1
    assert ("/paths/~1upload~1{id}/post", line, "path parameter {id} is not declared") in issues
    assert any("only JSON request bodies are supported" in m for _p, _l, m in issues)


# --- end to end ---------------------------------------------------------------------------------

CEDAR_SECRET_USE = """\
@id("agents-use-the-pets-key")
permit (principal, action == Action::"secret.use", resource)
when { context has secret && context.secret == "pets-key" };
"""


def pets_agent_script(request: ModelRequest) -> Any:
    calls = sum(1 for m in request.messages if m.role == "tool")
    if calls == 0:
        return ToolCall("c1", "petstore.get_pet_by_id", {"petId": "rex", "X-Trace": "t-9"})
    if calls == 1:
        return ToolCall("c2", "petstore.list_pets", {"limit": "two"})
    if calls == 2:
        return ToolCall("c3", "petstore.create_pet", {"name": "tom", "tag": None})
    return ScriptedModel.answer("done")


async def test_an_agent_calls_imported_operations_end_to_end(
    settings: Settings, upstream: Upstream
) -> None:
    model = ScriptedModel(pets_agent_script)
    key = SecretStr(base64.b64encode(os.urandom(32)).decode())
    settings = settings.model_copy(update={"secrets": SecretsSettings(master_key=key)})
    platform = Platform(settings, providers={"scripted": model})
    await platform.start()
    try:
        await _run_pets_agent(platform, model, upstream)
    finally:
        await platform.close()


async def _run_pets_agent(platform: Platform, model: ScriptedModel, upstream: Upstream) -> None:
    tools = import_openapi(
        PETSTORE,
        operations=["getPetById", "listPets", "createPet"],
        base_url=f"{upstream.url}/v1",
        name_prefix="petstore.",
        allow_hosts=["127.0.0.1"],
        headers={"X-Api-Key": "${secret:pets-key}"},
    )
    await register(
        platform,
        *(t.model_dump(mode="json", by_alias=True, exclude_unset=True) for t in tools),
        agent_document("pets-agent", tools={"allowed": ["petstore.*"]}),
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Policy",
            "metadata": {"name": "pets-key"},
            "spec": {"description": "Agents may use the pets key.", "cedar": CEDAR_SECRET_USE},
        },
    )
    secret = "pk-0123456789-very-secret"
    await platform.secrets.set("default", "pets-key", secret, actor="user:test")
    upstream.state["api_key"] = secret
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="pets-agent",
            task="Find rex",
            requested_by="user:test",
        )
    await platform.worker.run_until_idle()
    async with platform.store.transaction("default") as session:
        done = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
    assert (done.status, done.output) == ("SUCCEEDED", "done"), done.error
    calls = [call for _step, step_calls in steps for call in step_calls]
    assert [(c.tool_name, c.status) for c in calls] == [
        ("petstore.get_pet_by_id", "COMPLETED"),
        ("petstore.list_pets", "FAILED"),
        ("petstore.create_pet", "COMPLETED"),
    ]
    got = json.loads(calls[0].output.split("\n\n", 1)[1])
    # The key was injected at execution (the API saw it) and the trace header mapped.
    assert got == {"id": "rex", "trace": "t-9", "key_ok": True, "echo_key": None}
    assert calls[1].error_type == "invalid_arguments" and "limit" in calls[1].error
    created = json.loads(calls[2].output.split("\n\n", 1)[1])
    assert created == {"created": {"name": "tom"}, "key": f"{run.id}:2:0"}
    # The model saw the API's answer as untrusted data, and never the secret.
    seen = "\n".join(m.content for r in model.requests for m in r.messages)
    assert '"id":"rex"' in seen and 'trust="untrusted"' in seen
    assert "is not of type" in seen or "integer" in seen
    assert secret not in seen
    assert all(secret not in (c.output or "") + str(c.arguments) for c in calls)


# --- CLI ----------------------------------------------------------------------------------------


async def _local_admin(settings: Settings) -> None:
    platform = Platform(settings)
    await platform.start()
    try:
        await platform.ensure_local_admin()
    finally:
        await platform.close()


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    """A live API; the CLI finds it through CORRAL_API__URL and the admin key in CORRAL_HOME."""
    settings = Settings(home=tmp_path / "home", runtime={"poll_interval_seconds": 0.02})
    asyncio.run(_local_admin(settings))
    return cli_server(create_app(Platform(settings)), home=settings.home)


def test_cli_imports_operations_through_the_api(server: str, tmp_path: Path) -> None:
    spec = tmp_path / "petstore.yaml"
    spec.write_text(PETSTORE)
    runner = CliRunner()
    args = [
        "tools", "import-openapi", str(spec), "--operations", "listPets,getPetById",
        "--base-url", "http://127.0.0.1:9/v1", "--name-prefix", "petstore.",
        "--allow-host", "127.0.0.1", "--header", "X-Api-Key: ${secret:pets-key}",
    ]  # fmt: skip
    dry = runner.invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "tool/petstore.list_pets would be created" in dry.output
    listed = runner.invoke(cli, ["get", "tools", "-o", "name"])
    assert "petstore" not in listed.output
    applied = runner.invoke(cli, args)
    assert applied.exit_code == 0, applied.output
    assert "tool/petstore.get_pet_by_id created" in applied.output
    again = runner.invoke(cli, args)
    assert "tool/petstore.list_pets unchanged" in again.output
    listed = runner.invoke(cli, ["get", "tools", "-o", "name"])
    assert {"petstore.list_pets", "petstore.get_pet_by_id"} <= set(listed.output.split())


def test_cli_reports_an_unknown_operation_and_a_bad_header(server: str, tmp_path: Path) -> None:
    spec = tmp_path / "petstore.yaml"
    spec.write_text(PETSTORE)
    runner = CliRunner()
    result = runner.invoke(cli, ["tools", "import-openapi", str(spec), "--operations", "nope"])
    assert result.exit_code == 2
    assert "no operation 'nope'" in result.output
    result = runner.invoke(cli, ["tools", "import-openapi", str(spec), "--header", "no colon here"])
    assert result.exit_code == 2
    assert "is not 'Name: value'" in result.output


def test_a_duplicate_key_is_refused_with_its_pointer_and_line() -> None:
    text = "openapi: 3.0.0\npaths:\n  /x:\n    get: {operationId: a}\n  /x:\n    get: {}\n"
    [(path, line, message)] = issues_of(text)
    assert (path, line) == ("/paths/~1x", 5)
    assert "duplicate key '/x' (first at line 3)" in message


# JSON that YAML does not read (an implicit key longer than 1024 characters), so the JSON
# reader takes over; it is held to the YAML loader's rules.
NOT_YAML = '{"' + "k" * 1100 + '": 1, '


def test_a_duplicate_key_in_json_is_refused() -> None:
    text = NOT_YAML + '"openapi": "3.0.0", "paths": {}, "paths": {"/x": {}}}'
    [(_, _, message)] = issues_of(text)
    assert "duplicate key 'paths' in a JSON object" in message


@pytest.mark.parametrize("depth", [150, 50_000])  # past the loader's limit; past Python's
def test_deep_json_is_refused_not_a_recursion_error(depth: int) -> None:
    text = NOT_YAML + '"openapi": "3.0.0", "paths": {}, "x": ' + "[" * depth + "]" * depth + "}"
    [(_, _, message)] = issues_of(text)
    assert "nested more than 100 levels deep" in message


def test_an_alias_bomb_is_refused() -> None:
    lines = ["openapi: 3.0.0", "paths: {}", "l0: &l0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    [(path, _, message)] = issues_of("\n".join(lines) + "\n")
    assert path.startswith("/l")  # a JSON pointer, like every OpenAPI issue
    assert "aliases expand this document" in message
