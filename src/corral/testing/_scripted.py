"""A deterministic model provider for tests and benchmarks."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from corral.gateway.models import (
    Decision,
    FinalAnswer,
    ModelRequest,
    ModelResponse,
    ToolCall,
    Usage,
    parse_json_decision,
)

__all__ = ["ScriptStep", "ScriptedModel"]

ScriptStep: TypeAlias = FinalAnswer | ToolCall | list[ToolCall] | str
"""One scripted model output.

A :class:`~corral.gateway.models.FinalAnswer`, one :class:`~corral.gateway.models.ToolCall`, a
list of tool calls made in the same step, or raw model text. Raw text is parsed as a JSON decision
against the request's tools, so a script can include invalid output (bad JSON, unknown tool).
"""

ScriptFunction: TypeAlias = Callable[[ModelRequest], ScriptStep | Awaitable[ScriptStep]]
"""A function that picks the step for a request (sync or async)."""

EXHAUSTED_ANSWER = "script exhausted"
"""The final answer given once a list script has no steps left."""


class ScriptedModel:
    """A :class:`~corral.gateway.models.ModelProvider` that replays a script instead of a model.

    The script is a list of steps, consumed one per call, or a function of the request. Structured
    steps are returned as they are (a tool call naming a tool that was not offered is not
    rejected here, so tests can exercise the tool gateway's checks); ``str`` steps go through the
    same JSON-decision parser as a real json-mode model. When a list script runs out, every
    further call answers ``FinalAnswer("script exhausted")``. A list script is shared by every
    caller in call order; for concurrent runs, use a function of the request.

    Usage is an estimate, not a tokenizer count: input tokens are the characters of every
    message (content and tool-call JSON) divided by 4, output tokens the raw output's characters
    divided by 4.

    Example:
        ```python
        from corral.testing import ScriptedModel

        model = ScriptedModel(
            [ScriptedModel.call("fs.read_file", path="notes.txt"), ScriptedModel.answer("done")]
        )
        ```

    Args:
        script: The steps in order, or a function ``request -> step`` (may be async).
        name: Provider name, the part before ``/`` in model names.
        delay_seconds: Seconds each call sleeps before answering (to simulate latency in
            benchmarks of concurrent runs).

    Attributes:
        requests: Every request received, oldest first, for tests to assert on the context.
    """

    def __init__(
        self,
        script: Iterable[ScriptStep] | ScriptFunction,
        *,
        name: str = "scripted",
        delay_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.delay_seconds = delay_seconds
        self.requests: list[ModelRequest] = []
        self._function: ScriptFunction | None = None
        self._steps: list[ScriptStep] = []
        if callable(script):
            self._function = script
        else:
            self._steps = list(script)

    @staticmethod
    def call(name: str, /, **arguments: Any) -> ToolCall:
        """A tool call step: ``ScriptedModel.call("fs.read_file", path="a.txt")``.

        Args:
            name: Tool name (positional-only, so a tool argument may also be called ``name``).
            **arguments: The call's arguments.

        Returns:
            ``ToolCall(id="call_0", name=name, arguments=arguments)``.
        """
        return ToolCall(id="call_0", name=name, arguments=arguments)

    @staticmethod
    def answer(text: str) -> FinalAnswer:
        """A final answer step."""
        return FinalAnswer(text)

    @property
    def remaining(self) -> int:
        """Steps not yet used (always 0 for a function script)."""
        return len(self._steps)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Record ``request`` and answer with the next scripted step.

        Args:
            request: The model call.

        Returns:
            The step as a response. A ``str`` step that does not parse comes back as
            ``decision=None`` with the parser's error, like a real model's invalid output.
        """
        self.requests.append(request)
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)
        step = await self._next_step(request)
        decision: Decision | None
        error: str | None = None
        if isinstance(step, str):
            raw = step
            try:
                decision = parse_json_decision(step, request.tools)
            except ValueError as exc:
                decision, error = None, str(exc)
        else:
            decision = _as_decision(step)
            raw = _render(decision)
        usage = Usage(input_tokens=_request_chars(request) // 4, output_tokens=len(raw) // 4)
        return ModelResponse(
            decision=decision, raw=raw, usage=usage, error=error, response_model=request.model
        )

    async def _next_step(self, request: ModelRequest) -> ScriptStep:
        if self._function is not None:
            step = self._function(request)
            if inspect.isawaitable(step):
                return await step
            return step
        if not self._steps:
            return FinalAnswer(EXHAUSTED_ANSWER)
        return self._steps.pop(0)


def _as_decision(step: FinalAnswer | ToolCall | list[ToolCall]) -> Decision:
    """A structured step as a decision; duplicate call ids in one step become ``call_<n>``."""
    if isinstance(step, FinalAnswer):
        return step
    calls = [step] if isinstance(step, ToolCall) else list(step)
    if len({call.id for call in calls}) < len(calls):
        calls = [ToolCall(f"call_{n}", call.name, call.arguments) for n, call in enumerate(calls)]
    return calls


def _render(decision: Decision) -> str:
    """The raw text a json-mode model would have produced for ``decision``."""
    if isinstance(decision, FinalAnswer):
        return json.dumps({"final_answer": decision.text}, ensure_ascii=False)
    rendered = [{"tool": call.name, "arguments": call.arguments} for call in decision]
    return json.dumps(rendered[0] if len(rendered) == 1 else rendered, ensure_ascii=False)


def _request_chars(request: ModelRequest) -> int:
    """Characters in the request's messages, tool calls rendered as JSON."""
    total = 0
    for message in request.messages:
        total += len(message.content)
        for call in message.tool_calls:
            total += len(json.dumps({"tool": call.name, "arguments": call.arguments}))
    return total
