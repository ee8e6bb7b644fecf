"""The model gateway's provider interface and the shapes that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Decision",
    "FinalAnswer",
    "Message",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "ToolCall",
    "ToolDefinition",
    "Usage",
]


@dataclass(frozen=True)
class ToolDefinition:
    """A tool offered to the model: its name, description and arguments JSON Schema."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The model asks for one tool call.

    Attributes:
        id: Call id, unique within the step (the provider's id, or ``call_<n>``).
        name: Tool name as registered (``fs.read_file``).
        arguments: Parsed arguments object (not yet validated against the tool's schema).
    """

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class FinalAnswer:
    """The model ends the run with an answer."""

    text: str


Decision = list[ToolCall] | FinalAnswer
"""What a model call decided: one or more tool calls, or a final answer."""


@dataclass(frozen=True)
class Message:
    """One chat message in provider-neutral form.

    ``role="assistant"`` messages may carry ``tool_calls``; ``role="tool"`` messages answer one
    call and carry its ``tool_call_id``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ModelRequest:
    """One model call.

    Attributes:
        model: Provider-specific model name (the part after ``provider/``).
        messages: The context, oldest first.
        tools: Tools the model may call. Empty: it can only answer.
        temperature: Sampling temperature, 0-2.
        max_output_tokens: Cap on generated tokens, or ``None`` for the provider's setting.
        max_answer_chars: Cap on the final answer's length in characters (JSON decisions).
    """

    model: str
    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    temperature: float = 0.0
    max_output_tokens: int | None = None
    max_answer_chars: int = 4000


@dataclass(frozen=True)
class Usage:
    """Tokens counted by the provider for one call."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ModelResponse:
    """What a provider returned.

    Attributes:
        decision: The parsed decision, or ``None`` when the output could not be parsed.
        raw: The model's raw output text (or a JSON rendering of native tool calls).
        usage: Token counts.
        error: Why ``decision`` is ``None``, phrased for the model to correct itself.
        response_model: The model name the provider reports, if any.
    """

    decision: Decision | None
    raw: str
    usage: Usage = Usage()
    error: str | None = None
    response_model: str | None = None


@runtime_checkable
class ModelProvider(Protocol):
    """A model provider. Implementations: OpenAI-compatible, the embedded model, ScriptedModel.

    ``name`` is the provider part of model names (``openai`` in ``openai/gpt-4o``).
    """

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Make one model call.

        Raises:
            corral.errors.ModelAPIError: the provider failed (transport, HTTP status, timeout).
        """
        ...
