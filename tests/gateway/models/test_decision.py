import json

import jsonschema_rs
import pytest

from corral.gateway.models import (
    DEFAULT_MAX_STRING,
    MAX_GRAMMAR_REPEAT,
    FinalAnswer,
    ToolCall,
    ToolDefinition,
    decision_instructions,
    decision_schema,
    parse_json_decision,
)
from corral.gateway.models._decision import validate_decision_schema

READ_FILE = ToolDefinition(
    name="fs.read_file",
    description="Read a text file from the workspace.",
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "encoding": {"type": "string", "enum": ["utf-8"]},
        },
        "required": ["path"],
    },
)
ADD = ToolDefinition(
    name="math.add",
    description="Add two integers.",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": True,
    },
)
TOOLS = [READ_FILE, ADD]


def test_schema_has_one_branch_per_tool_then_the_final_answer() -> None:
    schema = decision_schema(TOOLS, max_answer_chars=300)

    branches = schema["anyOf"]
    assert [b["properties"].get("tool") for b in branches] == [
        {"const": "fs.read_file"},
        {"const": "math.add"},
        None,
    ]
    assert all(b["additionalProperties"] is False for b in branches)
    assert all(b["type"] == "object" for b in branches)
    assert branches[0]["required"] == ["tool", "arguments"]
    assert branches[2] == {
        "type": "object",
        "properties": {"final_answer": {"type": "string", "maxLength": 300}},
        "required": ["final_answer"],
        "additionalProperties": False,
    }
    validate_decision_schema(schema)


def test_schema_bounds_argument_strings_and_closes_argument_objects() -> None:
    schema = decision_schema(TOOLS, max_string=64)

    read_args = schema["anyOf"][0]["properties"]["arguments"]
    assert read_args["properties"]["path"] == {"type": "string", "maxLength": 64}
    # enum strings are already bounded
    assert "maxLength" not in read_args["properties"]["encoding"]
    assert read_args["additionalProperties"] is False
    # an explicit additionalProperties on the tool's schema is kept
    assert schema["anyOf"][1]["properties"]["arguments"]["additionalProperties"] is True
    # the tool's own schema is not modified
    assert "maxLength" not in READ_FILE.input_schema["properties"]["path"]
    assert DEFAULT_MAX_STRING <= MAX_GRAMMAR_REPEAT


def test_schema_lowers_bounds_llama_cpp_cannot_compile() -> None:
    big = ToolDefinition(
        name="fs.write_file",
        description="Write a file.",
        input_schema={
            "type": "object",
            "properties": {
                "content": {"type": "string", "maxLength": 100_000},
                "prefix": {"type": "string", "minLength": 5, "maxLength": 5000},
                "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 10_000},
                "slug": {"type": "string", "pattern": "^[a-z]{1,5000}$"},
                "code": {"type": "string", "pattern": "^[A-Z]{2,40}$"},
            },
        },
    )

    schema = decision_schema([big], max_answer_chars=4000)

    props = schema["anyOf"][0]["properties"]["arguments"]["properties"]
    assert props["content"]["maxLength"] == MAX_GRAMMAR_REPEAT
    assert props["prefix"]["maxLength"] == 5 + MAX_GRAMMAR_REPEAT
    assert props["lines"]["maxItems"] == MAX_GRAMMAR_REPEAT
    assert "pattern" not in props["slug"]
    assert props["code"]["pattern"] == "^[A-Z]{2,40}$"
    assert schema["anyOf"][1]["properties"]["final_answer"]["maxLength"] == MAX_GRAMMAR_REPEAT


def test_schema_without_tools_only_allows_a_final_answer() -> None:
    schema = decision_schema([])

    assert len(schema["anyOf"]) == 1
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid({"final_answer": "hi"})
    assert not validator.is_valid({"tool": "fs.read_file", "arguments": {}})


def test_schema_accepts_valid_decisions_and_rejects_invalid_ones() -> None:
    validator = jsonschema_rs.validator_for(decision_schema(TOOLS, max_answer_chars=10))

    assert validator.is_valid({"tool": "fs.read_file", "arguments": {"path": "a.txt"}})
    assert validator.is_valid({"final_answer": "short"})
    assert not validator.is_valid({"final_answer": "far too long an answer"})
    assert not validator.is_valid({"tool": "fs.delete", "arguments": {"path": "a.txt"}})
    assert not validator.is_valid({"tool": "fs.read_file", "arguments": {"path": "a", "x": 1}})
    assert not validator.is_valid({"tool": "fs.read_file", "arguments": {}, "note": "hi"})
    # math.add's arguments must match its own schema, not fs.read_file's
    assert not validator.is_valid({"tool": "math.add", "arguments": {"path": "a.txt"}})


def test_instructions_list_every_tool_with_its_arguments() -> None:
    text = decision_instructions(TOOLS)

    assert "- fs.read_file(path: string, encoding: string): Read a text file" in text
    assert "- math.add(a: integer, b: integer): Add two integers." in text
    assert '{"final_answer": "Settings are loaded in app/config.py."}' in text
    assert "No tools are available" in decision_instructions([])


def test_parse_tool_call() -> None:
    decision = parse_json_decision(
        json.dumps({"tool": "fs.read_file", "arguments": {"path": "notes.txt"}}), TOOLS
    )

    assert decision == [ToolCall(id="call_0", name="fs.read_file", arguments={"path": "notes.txt"})]


def test_parse_final_answer() -> None:
    assert parse_json_decision('{"final_answer": "42"}', TOOLS) == FinalAnswer("42")


def test_parse_rejects_unknown_tool_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown tool 'web\.search'.*fs\.read_file, math\.add"):
        parse_json_decision('{"tool": "web.search", "arguments": {}}', TOOLS)


def test_parse_rejects_tool_call_when_no_tools_are_offered() -> None:
    with pytest.raises(ValueError, match="available tools: none"):
        parse_json_decision('{"tool": "fs.read_file", "arguments": {}}', [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tool": "fs.read_file", ', "not valid JSON"),
        ("Sure! Here is the answer.", "not valid JSON"),
        ('["final_answer"]', "one JSON object"),
        ('{"tool": "fs.read_file", "arguments": {}, "why": "because"}', "nothing else"),
        ('{"tool": "fs.read_file", "arguments": "path=a.txt"}', "nothing else"),
        ('{"final_answer": "x", "tool": "fs.read_file"}', "nothing else"),
        ('{"final_answer": 42}', "a final answer is"),
        ('{"answer": "x"}', "reply with"),
    ],
)
def test_parse_rejects_malformed_decisions(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_json_decision(text, TOOLS)
