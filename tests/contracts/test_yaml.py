"""The bounded YAML loader: size, aliases, depth and duplicate keys, each refused with its place."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import yaml

from corral.contracts import (
    MAX_YAML_ALIAS_NODES,
    MAX_YAML_ALIASES,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    load_documents,
    load_paths,
    load_yaml,
    read_yaml_file,
)
from corral.errors import ContractIssue, InvalidContract

AGENT_YAML = """\
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: Answers questions about a codebase.
  owner: platform-team
  instructions: Answer using the fs tools.
  tools:
    allowed: [fs.read_file]
"""


def laughs(levels: int, width: int = 9, *, tail: str = "") -> str:
    """The "billion laughs" document: each anchor aliases the one before ``width`` times.

    Fully expanded, the last line holds ``width ** levels`` scalars (9 levels: 387 million).
    """
    lines = ["lol0: &lol0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*lol{level - 1}"] * width)
        lines.append(f"lol{level}: &lol{level} [{aliases}]")
    return "\n".join(lines) + "\n" + tail


def refusal(text: str, source: str = "contract.yaml") -> ContractIssue:
    with pytest.raises(InvalidContract) as caught:
        load_documents(text, source=source)
    [issue] = caught.value.issues
    assert issue.file == source
    return issue


def test_billion_laughs_is_refused_where_the_aliases_cross_the_bound() -> None:
    # A syntax error on the last line: a loader that read (or expanded) the whole document
    # first would report that instead. The refusal names an earlier line, so composition
    # stopped there, before any expansion.
    text = laughs(9, tail="broken: [unclosed\n")
    issue = refusal(text)
    assert "aliases expand this document by more than" in issue.message
    assert "write the values out" in issue.message
    assert issue.line is not None and 2 <= issue.line <= 6
    assert issue.path.startswith("lol")


def test_billion_laughs_costs_no_more_memory_than_a_small_document() -> None:
    # Old loaders built a line-number entry for every expanded node: 9**6 = 531,441 of them
    # for this document (tens of MB). The bound is on allocated bytes, not on time.
    tracemalloc.start()
    try:
        refusal(laughs(6))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_too_many_aliases_are_refused_even_when_each_is_small() -> None:
    text = "base: &b 1\nitems:\n" + "".join("  - *b\n" for _ in range(MAX_YAML_ALIASES + 1))
    issue = refusal(text)
    assert f"more than {MAX_YAML_ALIASES} aliases" in issue.message
    assert (issue.path, issue.line) == (f"items[{MAX_YAML_ALIASES}]", MAX_YAML_ALIASES + 3)


def test_a_recursive_alias_is_refused() -> None:
    issue = refusal("loop: &loop [a, *loop]\n")
    assert "refers to a node that holds it" in issue.message
    assert (issue.path, issue.line) == ("loop[1]", 1)


def test_small_anchors_still_work_and_aliased_fields_have_the_alias_line() -> None:
    text = (
        "common: &tools\n  allowed: [fs.read_file]\n"
        "apiVersion: corral.dev/v1\nkind: Agent\nmetadata: {name: a}\n"
        "spec:\n  description: d\n  owner: o\n  instructions: i\n  tools: *tools\n"
    )
    [document] = load_yaml(text)
    assert document.data["spec"]["tools"] == {"allowed": ["fs.read_file"]}
    assert document.lines[("spec", "tools")] == 10
    assert ("spec", "tools", "allowed") not in document.lines  # not expanded to find lines
    assert MAX_YAML_ALIAS_NODES >= 1000  # room for ordinary reuse


def test_a_second_allowed_key_is_refused_with_both_lines() -> None:
    # The last one would win: a second ``allowed`` silently widening the agent's tools.
    text = AGENT_YAML + "    allowed: ['*']\n"
    issue = refusal(text)
    assert (issue.path, issue.line) == ("spec.tools.allowed", 11)
    assert "duplicate key 'allowed' (first at line 10)" in issue.message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("a: 1\n'a': 2\n", "a"),  # quoted and plain are one string
        ("1: x\n1.0: y\n", "1.0"),  # equal once built, like a Python mapping
        ("{true: x, yes: y}", "yes"),  # YAML 1.1 booleans
        ("<<: {a: 1}\n<<: {b: 2}\n", "<<"),
    ],
)
def test_keys_equal_once_built_are_duplicates(text: str, key: str) -> None:
    issue = refusal(text)
    assert f"duplicate key {key!r}" in issue.message


def test_a_duplicate_in_the_second_document_names_that_document() -> None:
    text = (
        AGENT_YAML
        + "---\n"
        + AGENT_YAML.replace("  owner: platform-team\n", "  owner: a\n  owner: b\n")
    )
    issue = refusal(text)
    assert (issue.document, issue.path, issue.line) == (1, "spec.owner", 19)


def test_a_text_over_the_size_limit_is_refused_before_parsing() -> None:
    # Invalid YAML after the limit: it is never read.
    text = "a: " + "x" * MAX_YAML_BYTES + "\n: : ["
    issue = refusal(text)
    assert f"over the {MAX_YAML_BYTES}-byte limit" in issue.message
    assert "split it" in issue.message


def test_the_size_limit_counts_utf8_bytes() -> None:
    text = "a: " + "é" * (MAX_YAML_BYTES // 2)  # fewer characters than the limit, more bytes
    assert len(text) < MAX_YAML_BYTES
    assert "byte limit" in refusal(text).message


def test_a_large_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(MAX_YAML_BYTES + 1)  # a sparse file of NUL bytes: not YAML at all
    with pytest.raises(InvalidContract) as caught:
        read_yaml_file(big)
    [issue] = caught.value.issues
    assert (issue.file, issue.line) == (str(big), None)
    assert f"{MAX_YAML_BYTES + 1} bytes is over" in issue.message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    text = "a: " + "[" * 5000 + "]" * 5000
    issue = refusal(text)
    assert f"nested more than {MAX_YAML_DEPTH} levels deep" in issue.message
    assert issue.line == 1


def test_nesting_at_the_limit_is_read() -> None:
    text = "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH
    [document] = load_yaml(text)
    assert document.data is not None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: 1\nb: 2024-02-30\n", 2, "day is out of range"),
        ("a: !!int 0x\n", 1, "cannot read '0x' as int"),
        ("a: " + "9" * 5000 + "\n", 1, "as int"),
        ("a: 1\nb: \x00\n", 2, "special characters are not allowed (#x0000)"),
        ("a: \ud800\n", 1, "special characters are not allowed (#xd800)"),
        ("a: !!binary zz\n", 1, "base64"),
        ("? [a]\n: 1\n", 1, "unhashable key"),
    ],
)
def test_values_that_cannot_be_built_are_yaml_errors_with_a_line(
    text: str, line: int, words: str
) -> None:
    issue = refusal(text)
    assert issue.message.startswith("invalid YAML")
    assert words in issue.message
    assert issue.line == line


def test_load_paths_refuses_a_bomb_in_a_directory_with_its_file(tmp_path: Path) -> None:
    # Walking a directory once parsed every file with yaml.safe_load to spot policy case
    # files: the bomb went off there, before any limit.
    (tmp_path / "agent.yaml").write_text(AGENT_YAML)
    (tmp_path / "bomb.yaml").write_text(laughs(9))
    with pytest.raises(InvalidContract) as caught:
        load_paths([tmp_path])
    [issue] = caught.value.issues
    assert issue.file == str(tmp_path / "bomb.yaml")
    assert "aliases expand" in issue.message


def test_a_directory_of_policy_cases_only_says_so(tmp_path: Path) -> None:
    (tmp_path / "cases.yaml").write_text("cases:\n  - name: c\n")
    with pytest.raises(InvalidContract) as caught:
        load_paths([tmp_path])
    [issue] = caught.value.issues
    assert issue.file == str(tmp_path)
    assert "no contract documents" in issue.message


def test_load_paths_reports_a_non_utf8_file_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(InvalidContract) as caught:
        load_paths([bad])
    [issue] = caught.value.issues
    assert (issue.file, issue.line) == (str(bad), 2)
    assert issue.message.startswith("not UTF-8 text")


def test_a_single_document_reader_refuses_a_second_document() -> None:
    with pytest.raises(InvalidContract) as caught:
        load_yaml("a: 1\n---\nb: 2\n", single=True)
    [issue] = caught.value.issues
    assert issue.line == 2
    assert "found a second one" in issue.message


@pytest.mark.parametrize(
    "text",
    [
        laughs(9),
        "loop: &loop [a, *loop]\n",
        AGENT_YAML + "    allowed: ['*']\n",
        "a: " + "[" * 500 + "]" * 500,
        "a: 1\nb: 2024-02-30\n",
        "a: 1\nb: \x00\n",
    ],
)
def test_without_libyaml_the_same_refusals(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PyYAML built without libyaml parses in Python; the checks are in the composer, shared.
    with_libyaml = refusal(text)
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    assert refusal(text) == with_libyaml
