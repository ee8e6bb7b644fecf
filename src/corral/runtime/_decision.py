"""The model's reply as a step: the decision record, and the checks a final answer must pass.

:func:`decision_record` turns a model response into the step's :class:`StepRecord` (a final
answer, tool calls, or an invalid decision fed back to the model) and the run's ending if the
answer is accepted; :func:`refusal` says why a final answer is refused (a placeholder, the
runtime's own note on a repeated call echoed back, a repeated phrase, sources no tool call
returned).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from corral.gateway.models import FinalAnswer, repeated_phrase
from corral.runtime._context import decision_document, step_messages
from corral.runtime._state import RunState, StepRecord, Terminal

__all__ = ["decision_record", "refusal"]

_PLACEHOLDER = re.compile(r"\s*(<[^<>]{0,40}>|\.\.\.)?\s*")
"""An empty answer, or only a template's placeholder (small models copy ``<short answer>``)."""
_ECHOED_REPEAT_NOTE = re.compile(r"You already called \S+ with these arguments at step \d+")
"""The runtime's note on a repeated call (``_tool_phase.repeat_feedback``), echoed back as the
answer: small models copy the last message they saw."""


def decision_record(
    state: RunState, model: str, response: Any, started: datetime, *, withdrawn: bool
) -> tuple[StepRecord, Terminal | None]:
    usage = response.usage
    state.input_tokens += usage.input_tokens
    state.output_tokens += usage.output_tokens
    decision = response.decision
    tokens = (usage.input_tokens, usage.output_tokens)
    refused = None
    if isinstance(decision, FinalAnswer):
        refused = refusal(state, decision, withdrawn=withdrawn)
    if decision is None or refused is not None:
        error = refused or response.error or "unparseable reply"
        record = StepRecord(
            "invalid_decision",
            model,
            {"raw": response.raw, "error": error},
            started,
            error,
            *tokens,
        )
        state.messages += step_messages("invalid_decision", record.decision, [])
        return record, None
    document = decision_document(decision)
    if not isinstance(decision, list):
        record = StepRecord("final_answer", model, document, started, None, *tokens)
        return record, Terminal("SUCCEEDED", "final_answer", output=_output(decision))
    record = StepRecord("tool_calls", model, document, started, None, *tokens)
    record.tools_withdrawn = withdrawn
    return record, None


def refusal(state: RunState, answer: FinalAnswer, *, withdrawn: bool) -> str | None:
    """Why a final answer is refused as an invalid decision, phrased for the model."""
    if _PLACEHOLDER.fullmatch(answer.text):
        return f"{answer.text.strip()!r} is a placeholder: reply with your actual answer"
    if _ECHOED_REPEAT_NOTE.search(answer.text):
        return (
            "your final answer repeats Corral's note about a repeated tool call; answer the "
            "task itself, using the tool results above"
        )
    phrase = repeated_phrase(answer.text)
    if phrase is not None:
        return (
            f"your final answer repeats {phrase!r} over and over; answer concisely, in one "
            "or two sentences, and do not repeat yourself"
        )
    if not state.spec.answer.cite_sources:
        return None
    unseen = [path for path in answer.sources if path not in state.sources]
    if unseen:
        return (
            f"you cited {', '.join(map(repr, unseen))}, which no tool call of yours "
            "returned; cite only files you listed, read or found"
        )
    if not answer.sources and state.sources:
        return 'your final answer must cite "sources": the file(s) you read'
    if not answer.sources and not withdrawn:
        return "no tool call has returned a file yet: look at the workspace first"
    return None


def _output(answer: FinalAnswer) -> str:
    """The run's output: the answer, and the sources it cites on a last line."""
    if not answer.sources:
        return answer.text
    return f"{answer.text}\n\nSources: {', '.join(answer.sources)}"
