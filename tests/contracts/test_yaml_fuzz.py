"""Fuzzing the YAML loader: any text gives documents or Corral's own error, within bounded work.

Wall time is not asserted (the machine may be loaded); the work is: an accepted document
never expands past what was written plus ``MAX_YAML_ALIAS_NODES``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.contracts import (
    MAX_YAML_ALIAS_NODES,
    MAX_YAML_DEPTH,
    load_documents,
    load_paths,
    load_yaml,
)
from corral.errors import InvalidContract
from corral.gateway.tools import import_openapi
from corral.policy import load_cases

FUZZ = settings(
    deadline=None,
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Pieces that reach the loader's corners: anchors, aliases (defined or not, recursive),
# merge keys, explicit tags (safe and unsafe), flow and block nesting, duplicate keys,
# document markers, odd scalars and characters YAML refuses.
FRAGMENTS = [
    "a: ",
    "a: 1\n",
    "b: &x ",
    "&y [",
    "*x",
    "*y",
    "*zz",
    "[*x, *x, *x, *x]",
    "<<: *x\n",
    "<<: {a: 1}\n",
    "? ",
    ": ",
    "- ",
    "-\n  - ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "\n",
    "  ",
    "\t",
    "---\n",
    "...\n",
    "!!int ",
    "!!float ",
    "!!timestamp ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!python/object:os.system ",
    "!local ",
    "2024-02-30",
    "0x",
    "1e999999",
    "9" * 5000,
    "'quoted'",
    '"\\ud800"',
    '"\\x00"',
    "|\n  block\n",
    ">-\n  folded\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "true",
    "~",
    ".nan",
    "\x00",
    "\ud800",
    "\ufeff",
    "\u2028",
    "é",
]

yaml_like = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=60).map(
    "".join
)


def expanded_size(data: Any, cap: int) -> int:
    """Nodes in ``data`` walked as a tree (shared objects counted each time), up to ``cap``."""
    count, stack = 0, [data]
    while stack and count <= cap:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | set | tuple):
            stack.extend(value)
    return count


def load_or_refuse(text: str) -> list[Any] | None:
    """The documents' data, or ``None`` when refused with Corral's error (anything else fails)."""
    try:
        documents = load_yaml(text, source="fuzz.yaml")
    except InvalidContract as exc:
        assert exc.issues and all(issue.file == "fuzz.yaml" for issue in exc.issues)
        return None
    bound = len(text) + MAX_YAML_ALIAS_NODES
    for document in documents:
        assert expanded_size(document.data, bound) <= bound
    return [d.data for d in documents]


@FUZZ
@given(st.text(max_size=300))
def test_any_text_loads_or_is_refused_by_corral(text: str) -> None:
    load_or_refuse(text)


@FUZZ
@given(yaml_like)
def test_adversarial_yaml_loads_or_is_refused_by_corral(text: str) -> None:
    load_or_refuse(text)


@FUZZ
@given(
    levels=st.integers(min_value=1, max_value=30),
    width=st.integers(min_value=1, max_value=30),
    container=st.sampled_from(["[{}]", "{{{}}}"]),
)
def test_alias_bombs_of_any_shape_are_refused_before_expanding(
    levels: int, width: int, container: str
) -> None:
    def body(items: list[str]) -> str:
        if container == "[{}]":
            return "[" + ", ".join(items) + "]"
        return "{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}"

    lines = [f"l0: &l0 {body(['lol'] * width)}"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} {body([f'*l{level - 1}'] * width)}")
    text = "\n".join(lines) + "\n"
    data = load_or_refuse(text)
    written = (width + 1) * (levels + 1)
    if width**levels > written + MAX_YAML_ALIAS_NODES:
        assert data is None  # would expand past the bound: refused


@FUZZ
@given(depth=st.integers(min_value=1, max_value=3 * MAX_YAML_DEPTH), flow=st.booleans())
def test_any_nesting_depth_loads_or_is_refused(depth: int, flow: bool) -> None:
    if flow:
        text = "[" * depth + "]" * depth
    else:
        text = "".join(f"{'  ' * level}k:\n" for level in range(depth)) + "  " * depth + "v\n"
    data = load_or_refuse(text)
    assert (data is None) == (depth > MAX_YAML_DEPTH)


@FUZZ
@given(yaml_like)
def test_every_reader_of_yaml_refuses_with_corral_errors_only(text: str) -> None:
    for read in (
        lambda: load_documents(text, source="fuzz.yaml"),
        lambda: load_cases(text),
        lambda: import_openapi(text, source="fuzz.yaml"),
    ):
        try:
            read()
        except InvalidContract as exc:
            assert exc.issues


@settings(deadline=None, max_examples=25, database=None)
@given(st.binary(max_size=200))
def test_any_file_bytes_load_or_are_refused(tmp_path_factory: Any, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "contract.yaml"
    path.write_bytes(raw)
    try:
        load_paths([path])
    except InvalidContract as exc:
        assert exc.issues
