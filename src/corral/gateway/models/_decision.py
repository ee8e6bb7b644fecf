"""Schema-constrained JSON decisions for models that are weak at native tool calling.

The model must answer with exactly one JSON object matching :func:`decision_schema`: either
``{"tool": NAME, "arguments": {...}}`` for one tool call, or ``{"final_answer": "..."}``. One
``anyOf`` branch per allowed tool ties the tool's name (``const``) to its own argument schema,
so a grammar-constrained sampler (llama.cpp) can only produce calls that name an offered tool.
An agent that must cite its sources answers ``{"sources": [PATH, ...], "final_answer": "..."}``
where each path is an ``enum`` of the paths its tool calls returned.

:func:`repeated_phrase` spots degenerate answers (one phrase over and over), which the run loop
refuses as invalid decisions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from corral.gateway.models._base import Decision, FinalAnswer, ToolCall, ToolDefinition

__all__ = [
    "DEFAULT_MAX_STRING",
    "MAX_GRAMMAR_REPEAT",
    "MAX_SOURCES",
    "decision_instructions",
    "decision_schema",
    "parse_json_decision",
    "repeated_phrase",
]

DEFAULT_MAX_STRING = 512
"""``maxLength`` put on argument strings that have none, so sampling always terminates."""


MAX_GRAMMAR_REPEAT = 1000
"""Largest ``maxLength - minLength`` (or ``maxItems - minItems``) llama.cpp can compile.

llama-cpp-python turns ``maxLength: n`` into ``n`` nested optional groups, and llama.cpp's grammar
parser rejects more than 1000 of them ("number of rules that are going to be repeated multiplied
by the new repetition exceeds sane defaults"); llama-cpp-python 0.3.36's server then dies with
SIGSEGV instead of answering with an error. Measured with llama-cpp-python 0.3.36: a span of 1000
compiles, 1001 does not (the same holds for ``{m,n}`` in a ``pattern``). Larger bounds are lowered
to this; the tool gateway still validates the arguments against the tool's own schema.
"""


MAX_SOURCES = 3
"""Most paths one final answer may cite (``maxItems`` of ``sources``)."""

MAX_SOURCE_CHOICES = 200
"""Most paths offered in the ``sources`` enum (the most recently seen are kept)."""

_WORDS = re.compile(r"\w+")
_REPEATED_RUN = re.compile(r"(.{1,16}?)\1{7,}", re.DOTALL)


def repeated_phrase(text: str, *, words: int = 4, max_repeats: int = 2) -> str | None:
    """The phrase a degenerate answer repeats, or ``None`` for an answer that does not.

    An answer is degenerate when some phrase of ``words`` words (case-insensitive, punctuation
    ignored) occurs more than ``max_repeats`` times, overlapping occurrences included, or when
    more than half of it (at least 24 characters) is one short run repeated (``!!!!!!!!``,
    ``ab ab ab ab ...``): small models fall into both loops (the issue-12 demo answered
    "Your final answer is:" fifty times).

    Args:
        text: The answer.
        words: Phrase length in words (4: three repeats of a 3-word phrase are tolerated).
        max_repeats: Occurrences allowed per phrase.

    Returns:
        The repeated phrase (lowercased words joined by spaces, or the repeated run), or
        ``None``.
    """
    tokens = _WORDS.findall(text.lower())
    grams = Counter(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count > max_repeats:
            return " ".join(gram)
    stripped = text.strip()
    for match in _REPEATED_RUN.finditer(stripped):
        span = len(match.group(0))
        if span >= 24 and span * 2 > len(stripped) and match.group(1).strip():
            return match.group(1)
    return None


def _clamp_repeat(schema: dict[str, Any], low: str, high: str) -> None:
    """Lower ``schema[high]`` so that ``high - low`` is at most :data:`MAX_GRAMMAR_REPEAT`."""
    top, floor = schema.get(high), schema.get(low)
    if isinstance(top, int):
        schema[high] = min(top, (floor if isinstance(floor, int) else 0) + MAX_GRAMMAR_REPEAT)


_QUANTIFIER = re.compile(r"\{(\d*),(\d+)\}")


def _pattern_compiles(pattern: Any) -> bool:
    """Whether no ``{m,n}`` quantifier in ``pattern`` spans more than :data:`MAX_GRAMMAR_REPEAT`."""
    if not isinstance(pattern, str):
        return True
    spans = (int(high) - int(low or 0) for low, high in _QUANTIFIER.findall(pattern))
    return all(span <= MAX_GRAMMAR_REPEAT for span in spans)


def _bounded(schema: Any, max_string: int) -> Any:
    """Copy of ``schema`` where every ``type: string`` without ``maxLength`` gets one.

    Bounds too large for llama.cpp's grammar compiler are lowered (:data:`MAX_GRAMMAR_REPEAT`),
    and a ``pattern`` with such a quantifier is dropped.
    """
    if isinstance(schema, dict):
        out = {key: _bounded(value, max_string) for key, value in schema.items()}
        if not _pattern_compiles(out.get("pattern")):
            del out["pattern"]
        if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
            out["maxLength"] = max_string
        _clamp_repeat(out, "minLength", "maxLength")
        _clamp_repeat(out, "minItems", "maxItems")
        return out
    if isinstance(schema, list):
        return [_bounded(item, max_string) for item in schema]
    return schema


def decision_schema(
    tools: list[ToolDefinition],
    *,
    max_answer_chars: int = 4000,
    max_string: int = DEFAULT_MAX_STRING,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON Schema of one decision over ``tools``.

    Args:
        tools: Tools the model may call now.
        max_answer_chars: ``maxLength`` of the final answer, lowered to
            :data:`MAX_GRAMMAR_REPEAT` if larger.
        max_string: ``maxLength`` added to argument strings that have none.
        sources: The paths a final answer may cite, when it must cite (``None``: it need
            not). The final-answer branch then requires ``sources`` (before ``final_answer``,
            so the model picks its evidence first), an array of 1 to :data:`MAX_SOURCES` items
            from this enum (its last :data:`MAX_SOURCE_CHOICES` paths). While it is empty and
            tools are offered, no final answer is offered (the model must look first); with
            neither paths nor tools the final answer needs no sources.

    Returns:
        ``{"anyOf": [one branch per tool..., final-answer branch]}``; every branch has
        ``additionalProperties: false``. Every ``maxLength``/``maxItems`` exceeds its minimum
        by at most :data:`MAX_GRAMMAR_REPEAT`, so llama.cpp can compile it into a grammar.
    """
    branches: list[dict[str, Any]] = []
    for tool in tools:
        arguments = _bounded(tool.input_schema, max_string)
        arguments.setdefault("additionalProperties", False)
        branches.append(
            {
                "type": "object",
                "properties": {"tool": {"const": tool.name}, "arguments": arguments},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    answer = {"type": "string", "maxLength": min(max_answer_chars, MAX_GRAMMAR_REPEAT)}
    if sources:
        choices = list(dict.fromkeys(sources))[-MAX_SOURCE_CHOICES:]
        cited = {
            "type": "array",
            "items": {"type": "string", "enum": choices},
            "minItems": 1,
            "maxItems": min(MAX_SOURCES, len(choices)),
        }
        branches.append(
            {
                "type": "object",
                "properties": {"sources": cited, "final_answer": answer},
                "required": ["sources", "final_answer"],
                "additionalProperties": False,
            }
        )
    elif sources is None or not tools:
        branches.append(
            {
                "type": "object",
                "properties": {"final_answer": answer},
                "required": ["final_answer"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": branches}


def decision_instructions(tools: list[ToolDefinition], *, cite_sources: bool = False) -> str:
    """A system-prompt section that explains the JSON decision format and lists the tools.

    Written for small models: short, concrete, one example of each decision, and the rules
    their answers break most (repeating a call, repeating a phrase, not naming the file).

    Args:
        tools: Tools the model may call now.
        cite_sources: The final answer must carry ``sources`` (``answer.cite_sources``).

    Returns:
        The text, one instruction per line.
    """
    # A concrete example rather than a template: small models copy "<your answer>" verbatim.
    example = (
        '{"sources": ["app/config.py"], "final_answer": "Settings are loaded in app/config.py."}'
        if cite_sources
        else '{"final_answer": "Settings are loaded in app/config.py."}'
    )
    lines = [
        "Reply with exactly one JSON object and nothing else.",
        'To call a tool: {"tool": "<tool name>", "arguments": {...}}',
        "To finish, answer in one or two sentences that name the file you read"
        + (" and cite it in sources" if cite_sources else "")
        + f", like: {example}",
        "Never repeat a tool call with the same arguments: its result is above. "
        "Never repeat a phrase.",
    ]
    if tools:
        lines.append("Tools:")
        for tool in tools:
            props = tool.input_schema.get("properties", {})
            args = ", ".join(f"{name}: {spec.get('type', 'any')}" for name, spec in props.items())
            lines.append(f"- {tool.name}({args}): {tool.description}")
    else:
        lines.append("No tools are available now: give your final answer.")
    return "\n".join(lines)


def parse_json_decision(text: str, tools: list[ToolDefinition]) -> Decision:
    """Parse a JSON decision produced under :func:`decision_schema`.

    Only the decision's shape is checked here (a known tool name and an ``arguments`` object);
    the arguments are validated against the tool's schema by the tool gateway.

    Raises:
        ValueError: with a message addressed to the model (it is fed back so it can correct).
    """
    try:
        # strict=False: llama.cpp's JSON grammar lets raw newlines into strings.
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"your reply is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise ValueError("your reply must be one JSON object")
    if "final_answer" in data and "tool" not in data:
        return _final_answer(data)
    names = [tool.name for tool in tools]
    if "tool" in data:
        name = data.get("tool")
        if name not in names:
            raise ValueError(
                f"unknown tool {name!r}; available tools: {', '.join(names) or 'none'}"
            )
        arguments = data.get("arguments", {})
        if not isinstance(arguments, dict) or set(data) - {"tool", "arguments"}:
            raise ValueError('a tool call is {"tool": NAME, "arguments": {...}} and nothing else')
        return [ToolCall(id="call_0", name=str(name), arguments=arguments)]
    raise ValueError('reply with {"tool": ..., "arguments": {...}} or {"final_answer": "..."}')


def _final_answer(data: dict[str, Any]) -> FinalAnswer:
    """A final answer decision, with its cited ``sources`` (deduplicated, in order)."""
    text, sources = data["final_answer"], data.get("sources", [])
    if not isinstance(text, str) or set(data) - {"final_answer", "sources"}:
        raise ValueError('a final answer is {"final_answer": "..."} and nothing else')
    if not isinstance(sources, list) or not all(isinstance(p, str) for p in sources):
        raise ValueError('"sources" must be a list of workspace paths')
    return FinalAnswer(text, tuple(dict.fromkeys(sources)))


def validate_decision_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``schema`` is not a valid JSON Schema (used by tests)."""
    import jsonschema_rs  # a 6 MB extension module: only tests call this

    try:
        jsonschema_rs.validator_for(schema)
    except Exception as exc:
        raise ValueError(str(exc)) from exc
