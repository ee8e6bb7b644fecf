from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import agent_document
from corral.contracts import (
    SCHEMA_CHECKED,
    Agent,
    AgentModel,
    AgentTools,
    Model,
    Tool,
    load_documents,
    load_paths,
    parse_document,
)
from corral.errors import InvalidContract

AGENT_YAML = """\
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: Answers questions about a codebase.
  owner: platform-team
  instructions: Answer using the fs tools.
  limits:
    max_iterations: 5
"""


def issues_of(text: str, source: str = "agents.yaml") -> list:
    with pytest.raises(InvalidContract) as info:
        load_documents(text, source=source)
    return info.value.issues


def test_agent_round_trips_through_its_json_document() -> None:
    agent = Agent.model_validate(
        agent_document(limits={"max_iterations": 3, "max_cost_usd": "1.50"}, risk_tier="high")
    )
    dumped = agent.model_dump(mode="json", by_alias=True)
    assert dumped["apiVersion"] == "corral.dev/v1"
    assert "api_version" not in dumped
    assert Agent.model_validate(dumped) == agent


def test_yaml_document_loads_with_source_and_index() -> None:
    [document] = load_documents(AGENT_YAML, source="agents.yaml")
    assert (document.source, document.index) == ("agents.yaml", 0)
    assert isinstance(document.contract, Agent)
    assert document.contract.spec.limits.max_iterations == 5
    # Unspecified fields take their defaults.
    assert document.contract.spec.limits.max_tool_calls == 20


@pytest.mark.parametrize("api_version", [None, "corral.dev/v2", "v1"])
def test_api_version_corral_dev_v1_is_required(api_version: str | None) -> None:
    document = agent_document()
    if api_version is None:
        del document["apiVersion"]
    else:
        document["apiVersion"] = api_version
    with pytest.raises(InvalidContract) as info:
        parse_document(document)
    [issue] = info.value.issues
    assert issue.path == "apiVersion"
    assert "corral.dev/v1" in issue.message


def test_unknown_field_reported_with_file_path_and_line() -> None:
    text = AGENT_YAML.replace("  owner: platform-team\n", "  owner: platform-team\n  colour: red\n")
    [issue] = issues_of(text)
    assert issue.file == "agents.yaml"
    assert issue.path == "spec.colour"
    assert issue.line == 8
    assert "unknown field" in issue.message
    assert str(issue).startswith("agents.yaml:8: spec.colour:")


def test_wrong_value_in_nested_field_reported_with_its_line() -> None:
    [issue] = issues_of(AGENT_YAML.replace("max_iterations: 5", "max_iterations: 0"))
    assert (issue.path, issue.line) == ("spec.limits.max_iterations", 10)
    assert "greater than or equal to 1" in issue.message


def test_wrong_type_in_nested_field_reported_with_its_line() -> None:
    [issue] = issues_of(AGENT_YAML.replace("max_iterations: 5", "max_iterations: many"))
    assert (issue.path, issue.line) == ("spec.limits.max_iterations", 10)
    assert "integer" in issue.message


def test_every_problem_is_reported_at_once() -> None:
    text = AGENT_YAML.replace("max_iterations: 5", "max_iterations: 0\n    speed: 3")
    assert [(i.path, i.line) for i in issues_of(text)] == [
        ("spec.limits.max_iterations", 10),
        ("spec.limits.speed", 11),
    ]


def test_missing_required_field_points_at_its_parent() -> None:
    [issue] = issues_of(AGENT_YAML.replace("  owner: platform-team\n", ""))
    assert issue.path == "spec.owner"
    assert issue.line == 5  # the `spec:` line
    assert "required" in issue.message.lower()


def test_second_document_of_a_stream_reports_its_index_and_file_line() -> None:
    second = AGENT_YAML.replace("repo-analyst", "other").replace(
        "max_iterations: 5", "max_iterations: -1"
    )
    text = AGENT_YAML + "---\n" + second
    [issue] = issues_of(text)
    assert issue.document == 1
    assert issue.path == "spec.limits.max_iterations"
    # Line within the whole file: 10 lines of the first document, the separator, then line 10.
    assert issue.line == 21


def test_two_valid_documents_load_in_order() -> None:
    text = AGENT_YAML + "---\n" + AGENT_YAML.replace("repo-analyst", "other") + "---\n"
    documents = load_documents(text)
    assert [(d.index, d.contract.metadata.name) for d in documents] == [
        (0, "repo-analyst"),
        (1, "other"),
    ]


def test_empty_documents_are_skipped_but_keep_their_position() -> None:
    bad = AGENT_YAML.replace("repo-analyst", "other").replace("max_iterations: 5", "speed: 1")
    text = AGENT_YAML + "---\n---\n" + bad + "---\n"
    [issue] = issues_of(text)
    assert (issue.document, issue.path) == (2, "spec.limits.speed")


def test_yaml_syntax_error_reports_a_line() -> None:
    text = "apiVersion: corral.dev/v1\nkind: Agent\nmetadata:\n  name: [unclosed\nspec: {}\n"
    [issue] = issues_of(text)
    assert issue.message.startswith("invalid YAML")
    assert issue.line is not None and 4 <= issue.line <= 5


def test_unknown_kind_lists_the_known_kinds() -> None:
    [issue] = issues_of("apiVersion: corral.dev/v1\nkind: Gadget\nmetadata: {name: x}\n")
    assert (issue.path, issue.line) == ("kind", 2)
    assert "Gadget" in issue.message
    assert "Agent, EvalSuite, McpServer, Model, Policy, Prompt, Tool" in issue.message


def test_document_that_is_not_a_mapping_is_refused() -> None:
    [issue] = issues_of("- just\n- a list\n")
    assert "mapping" in issue.message


def test_load_paths_reads_a_directory_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "b.yaml").write_text(AGENT_YAML.replace("repo-analyst", "bravo"))
    (tmp_path / "a.yml").write_text(AGENT_YAML.replace("repo-analyst", "alpha"))
    (tmp_path / "nested" / "c.yaml").write_text(AGENT_YAML.replace("repo-analyst", "charlie"))
    (tmp_path / "notes.txt").write_text("not a contract")
    documents = load_paths([tmp_path])
    assert [d.contract.metadata.name for d in documents] == ["alpha", "bravo", "charlie"]
    assert documents[0].source == str(tmp_path / "a.yml")


def test_load_paths_reports_a_missing_path_and_returns_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(AGENT_YAML)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InvalidContract) as info:
        load_paths([tmp_path / "a.yaml", missing])
    [issue] = info.value.issues
    assert issue.file == str(missing)
    assert "no such file" in issue.message


def test_load_paths_collects_problems_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(AGENT_YAML.replace("max_iterations: 5", "max_iterations: 0"))
    (tmp_path / "b.yaml").write_text("kind: [\n")
    with pytest.raises(InvalidContract) as info:
        load_paths([tmp_path])
    assert [Path(i.file).name for i in info.value.issues] == ["a.yaml", "b.yaml"]


def tool_document(input_schema: dict) -> dict:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Tool",
        "metadata": {"name": "http.get_json"},
        "spec": {
            "description": "Fetch JSON.",
            "type": "http",
            "input_schema": input_schema,
            "http": {"url": "https://api.example.com/json"},
        },
    }


def test_tool_with_a_valid_schema_is_accepted() -> None:
    tool = parse_document(
        tool_document({"type": "object", "properties": {"url": {"type": "string"}}})
    )
    assert isinstance(tool, Tool)
    assert tool.spec.side_effect == "read"


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"url": {"type": "no-such-type"}}}, "JSON Schema"),
        ({"type": "object", "minProperties": -1}, "JSON Schema"),
        ({"type": "string"}, "'type': 'object'"),
    ],
)
def test_tool_with_an_invalid_input_schema_is_refused(schema: dict, expected: str) -> None:
    with pytest.raises(InvalidContract) as info:
        parse_document(tool_document(schema))
    [issue] = info.value.issues
    assert issue.path == "spec.input_schema"
    assert expected in issue.message


def test_schema_checked_skips_only_the_schema_compilation() -> None:
    # For Corral's own built-in tools (compiled by tests/gateway/tools/test_fs.py): the rest of
    # the document is validated as usual, 'type': 'object' included.
    unknown_type = {"type": "object", "properties": {"url": {"type": "no-such-type"}}}
    with pytest.raises(ValidationError, match="JSON Schema"):
        Tool.model_validate(tool_document(unknown_type))
    tool = Tool.model_validate(tool_document(unknown_type), context=SCHEMA_CHECKED)
    assert tool.spec.input_schema == unknown_type
    with pytest.raises(ValidationError, match="'type': 'object'"):
        Tool.model_validate(tool_document({"type": "string"}), context=SCHEMA_CHECKED)
    with pytest.raises(ValidationError, match="metadata"):
        Tool.model_validate(
            {**tool_document({"type": "object"}), "metadata": {}}, context=SCHEMA_CHECKED
        )


def test_implementation_only_for_builtin_tools() -> None:
    document = tool_document({"type": "object"})
    document["spec"]["implementation"] = "fs.list_dir"
    with pytest.raises(InvalidContract, match="only for type 'builtin'"):
        parse_document(document)


def test_agent_contract_is_immutable() -> None:
    agent = Agent.model_validate(agent_document())
    with pytest.raises(ValidationError):
        agent.spec.owner = "someone-else"  # type: ignore[misc]


def test_permits_matches_prefix_patterns_and_exact_names() -> None:
    tools = AgentTools(allowed=["fs.*", "http.get"])
    assert tools.permits("fs.read_file")
    assert tools.permits("fs.list_dir")
    assert tools.permits("http.get")
    assert not tools.permits("http.get_json")
    assert not tools.permits("fsx.read")
    assert not tools.permits("shell.exec")


def test_denied_overrides_allowed() -> None:
    tools = AgentTools(allowed=["fs.*"], denied=["fs.read_file"])
    assert tools.permits("fs.list_dir")
    assert not tools.permits("fs.read_file")
    everything_but_fs = AgentTools(allowed=["*"], denied=["fs.*"])
    assert everything_but_fs.permits("http.get")
    assert not everything_but_fs.permits("fs.search_text")


def test_nothing_allowed_by_default() -> None:
    assert not AgentTools().permits("fs.list_dir")


@pytest.mark.parametrize("pattern", ["fs.*.x", "*fs", "FS.*", ""])
def test_invalid_tool_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValidationError):
        AgentTools(allowed=[pattern])


MODEL_YAML = """\
apiVersion: corral.dev/v1
kind: Model
metadata:
  name: smart
spec:
  description: Big model, EU first.
  deployments:
    - provider: openai
      model: gpt-4o
      base_url: https://eu.example.com/v1
      api_key: ${secret:EU_KEY}
      region: eu-west
      weight: 3
      prices: {input_usd_per_mtok: "2.50", output_usd_per_mtok: "10"}
      decoding: {temperature: 0.2}
    - provider: anthropic
      model: claude-sonnet-4-5
      region: us-east
"""


def test_a_model_document_maps_an_alias_to_ordered_deployments() -> None:
    [document] = load_documents(MODEL_YAML, source="models.yaml")
    model = document.contract
    assert isinstance(model, Model)
    first, second = model.spec.deployments
    assert (first.provider, first.region, first.weight, first.max_retries) == (
        "openai",
        "eu-west",
        3,
        2,
    )
    assert first.prices is not None and first.prices.input_usd_per_mtok == Decimal("2.50")
    assert (second.provider, second.weight, second.capabilities.tool_calling) == (
        "anthropic",
        1,
        True,
    )


def test_a_model_api_key_must_be_a_secret_reference_and_errors_name_the_line() -> None:
    text = MODEL_YAML.replace("${secret:EU_KEY}", "sk-live-123").replace("weight: 3", "weight: 0")
    issues = issues_of(text)
    assert {(i.path, i.line) for i in issues} == {
        ("spec.deployments[0].api_key", 11),
        ("spec.deployments[0].weight", 13),
    }


def test_a_model_needs_a_deployment() -> None:
    [issue] = issues_of(
        "apiVersion: corral.dev/v1\nkind: Model\nmetadata: {name: fast}\nspec: {deployments: []}\n"
    )
    assert issue.path == "spec.deployments"


def test_agents_name_aliases_or_provider_models_and_may_restrict_regions() -> None:
    spec = {
        "description": "d",
        "owner": "o",
        "instructions": "i",
        "model": {"default": "smart", "fallback": ["fast", "openai/gpt-4o-mini"]},
        "data_residency": ["eu-west"],
    }
    agent = Agent.model_validate(
        {"apiVersion": "corral.dev/v1", "kind": "Agent", "metadata": {"name": "a"}, "spec": spec}
    )
    assert agent.spec.model.fallback == ["fast", "openai/gpt-4o-mini"]
    assert agent.spec.data_residency == ["eu-west"]
    with pytest.raises(ValidationError):
        AgentModel(default="Not An Alias")
    # Unset, the field is left out of the document: existing agents keep their digests.
    del spec["data_residency"]
    plain = Agent.model_validate(
        {"apiVersion": "corral.dev/v1", "kind": "Agent", "metadata": {"name": "a"}, "spec": spec}
    )
    assert "data_residency" not in plain.model_dump(by_alias=True)["spec"]
