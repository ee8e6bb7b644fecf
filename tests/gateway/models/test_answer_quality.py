"""The degenerate-answer detector, cited sources in JSON decisions, and decoding defaults."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest

from corral.gateway.models import (
    MAX_SOURCES,
    FinalAnswer,
    ModelRequest,
    ToolDefinition,
    decision_instructions,
    decision_schema,
    local_provider,
    parse_json_decision,
    repeated_phrase,
)
from corral.gateway.models._openai import Decoding
from corral.settings import LocalModelSettings

LIST_DIR = ToolDefinition(
    name="fs.list_dir",
    description="List a directory.",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
)

# --- repeated_phrase ---------------------------------------------------------------------------


def test_the_demo_answer_is_degenerate() -> None:
    assert repeated_phrase("Your final answer is: " * 50) == "your final answer is"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The Client class is defined in _client.py.",
        "httpx is an HTTP client. Its main modules are _client.py, _models.py and _urls.py.",
        # A 4-word phrase twice is tolerated, as is a 3-word phrase any number of times.
        "It reads the file. Then it reads the file again.",
        "in the code, in the code",
    ],
)
def test_sensible_answers_pass(text: str) -> None:
    assert repeated_phrase(text) is None


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("a b c d a b c d a b c d", "a b c d"),
        ("The answer is here. THE ANSWER IS HERE! the answer, is here?", "the answer is here"),
        ("x " * 12, "x x x x"),
        ("Answer: " + "=" * 40, "="),
        ("!" * 30, "!"),
    ],
)
def test_a_phrase_over_and_over_is_caught(text: str, phrase: str) -> None:
    assert repeated_phrase(text) == phrase


@pytest.mark.parametrize("repeats", range(1, 8))
@pytest.mark.parametrize("words", range(4, 9))
def test_threshold_is_more_than_twice(repeats: int, words: int) -> None:
    phrase = " ".join(f"w{i}" for i in range(words))
    text = " | ".join([phrase] * repeats)
    found = repeated_phrase(text)
    assert (found is not None) == (repeats > 2)
    if found is not None:
        assert found in phrase


def test_a_long_run_in_a_long_answer_is_only_caught_when_it_dominates() -> None:
    assert repeated_phrase("See a.py. " + "-" * 30) == "-"  # most of it is the run
    long_prose = " ".join(f"word{i}" for i in range(60))
    assert repeated_phrase(long_prose + " " + "-" * 30) is None


# --- cited sources -----------------------------------------------------------------------------


def _final_branch(schema: dict[str, Any]) -> dict[str, Any] | None:
    branches = [b for b in schema["anyOf"] if "final_answer" in b["properties"]]
    assert len(branches) <= 1
    return branches[0] if branches else None


def test_sources_enum_holds_exactly_the_paths_seen() -> None:
    seen = ("README.md", "pkg/core.py", "pkg/util.py")
    branch = _final_branch(decision_schema([LIST_DIR], sources=seen))
    assert branch is not None
    assert list(branch["properties"]) == ["sources", "final_answer"]  # evidence first
    assert branch["required"] == ["sources", "final_answer"]
    cited = branch["properties"]["sources"]
    assert cited["items"]["enum"] == list(seen)
    assert (cited["minItems"], cited["maxItems"]) == (1, MAX_SOURCES)


def test_schema_accepts_only_seen_paths() -> None:
    schema = decision_schema([LIST_DIR], sources=("a.py",))
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid({"sources": ["a.py"], "final_answer": "in a.py"})
    assert not validator.is_valid({"sources": ["b.py"], "final_answer": "in b.py"})
    assert not validator.is_valid({"sources": [], "final_answer": "nowhere"})
    assert not validator.is_valid({"final_answer": "no sources"})
    assert validator.is_valid({"tool": "fs.list_dir", "arguments": {"path": "."}})


def test_no_final_answer_before_a_path_was_seen() -> None:
    assert _final_branch(decision_schema([LIST_DIR], sources=())) is None
    # Without tools (the last iteration) an answer is always possible.
    branch = _final_branch(decision_schema([], sources=()))
    assert branch is not None and branch["required"] == ["final_answer"]
    # An agent that does not cite: unchanged.
    branch = _final_branch(decision_schema([LIST_DIR]))
    assert branch is not None and list(branch["properties"]) == ["final_answer"]


def test_duplicate_paths_are_offered_once_and_few_items_cap_max_items() -> None:
    branch = _final_branch(decision_schema([], sources=("a.py", "a.py")))
    assert branch is not None
    assert branch["properties"]["sources"]["items"]["enum"] == ["a.py"]
    assert branch["properties"]["sources"]["maxItems"] == 1


def test_parse_final_answer_with_sources() -> None:
    text = json.dumps({"sources": ["a.py", "b.py", "a.py"], "final_answer": "see a.py"})
    assert parse_json_decision(text, [LIST_DIR]) == FinalAnswer("see a.py", ("a.py", "b.py"))
    with pytest.raises(ValueError, match="list of workspace paths"):
        parse_json_decision('{"sources": "a.py", "final_answer": "x"}', [LIST_DIR])


def test_raw_newlines_in_an_answer_are_accepted() -> None:
    # llama.cpp's JSON grammar lets control characters into strings; the answer is still fine.
    assert parse_json_decision('{"final_answer": "a\nb"}', [LIST_DIR]) == FinalAnswer("a\nb")


def test_instructions_ask_small_models_to_cite() -> None:
    text = decision_instructions([LIST_DIR], cite_sources=True)
    assert '{"sources": ["app/config.py"], "final_answer": "Settings are loaded' in text
    assert "Never repeat a tool call" in text and "<short answer>" not in text
    assert "sources" not in decision_instructions([LIST_DIR])


# --- decoding defaults -------------------------------------------------------------------------


def test_decoding_fills_only_what_the_request_leaves_unset() -> None:
    decoding = Decoding(repeat_penalty=1.1, frequency_penalty=0.5, seed=7, max_answer_chars=600)
    request = ModelRequest("m", [], temperature=0.3, repeat_penalty=1.3)
    applied = decoding.apply(request)
    assert (applied.repeat_penalty, applied.frequency_penalty, applied.seed) == (1.3, 0.5, 7)
    assert (applied.temperature, applied.max_answer_chars) == (0.3, 600)
    assert Decoding(temperature=0.0).apply(request).temperature == 0.0
    assert Decoding().apply(request) is request


async def test_local_provider_carries_the_embedded_model_defaults() -> None:
    settings = LocalModelSettings(repeat_penalty=1.2, max_answer_chars=300, temperature=0.1)
    provider = local_provider("http://127.0.0.1:8421/v1", settings)
    try:
        assert provider.decoding == Decoding(
            temperature=0.1, repeat_penalty=1.2, frequency_penalty=None, max_answer_chars=300
        )
    finally:
        await provider.aclose()
