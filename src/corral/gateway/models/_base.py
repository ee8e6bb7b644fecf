"""The model gateway's provider interface and the shapes that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Attempt",
    "Decision",
    "FinalAnswer",
    "Message",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "Price",
    "Served",
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
    """The model ends the run with an answer.

    Attributes:
        text: The answer.
        sources: Workspace paths the answer cites (``answer.cite_sources``), relative to the
            workspace root; empty when the agent does not cite.
    """

    text: str
    sources: tuple[str, ...] = ()


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
        seed: Sampling seed, or ``None``. A fixed seed (or temperature 0) makes a request
            deterministic enough for the exact-match response cache.
        repeat_penalty: llama.cpp's repetition penalty (1.0: none), or ``None`` for the
            server's setting. Sent to OpenAI-compatible servers as an extra body field.
        frequency_penalty: OpenAI's frequency penalty (-2..2), or ``None``.
        answer_sources: The workspace paths a final answer may cite, when the agent must cite
            them (``answer.cite_sources``); ``None`` when it need not. A JSON decision schema
            makes ``sources`` (one or more of these) required in the final answer, and offers
            no final answer while this is empty and tools are offered.
    """

    model: str
    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    temperature: float = 0.0
    max_output_tokens: int | None = None
    max_answer_chars: int = 4000
    seed: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    answer_sources: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens counted by the provider for one call.

    Attributes:
        input_tokens: Every prompt token, cache reads and writes included (OpenAI's
            ``prompt_tokens``; Anthropic's ``input_tokens + cache_read_input_tokens +
            cache_creation_input_tokens``).
        output_tokens: Every generated token, reasoning included.
        cache_read_tokens: Prompt tokens served from the provider's prompt cache (a subset of
            ``input_tokens``, priced at the cache-read rate).
        cache_write_tokens: Prompt tokens written to the provider's prompt cache (a subset of
            ``input_tokens``, priced at the cache-write rate).
        reasoning_tokens: Generated tokens spent on hidden reasoning (a subset of
            ``output_tokens``).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Price:
    """A deployment's price override, in US dollars per million tokens.

    ``None`` cache rates fall back to the input rate.
    """

    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cache_read_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None


@dataclass(frozen=True)
class Served:
    """Which deployment answered a model call.

    Attributes:
        alias: The model name the caller asked for (an alias such as ``default``, or a
            ``provider/model`` name).
        deployment: The deployment's name (``provider/model`` or ``alias#index``).
        provider: Provider name (``openai``, ``anthropic``, ``local``...).
        model: The provider's model name.
        region: The deployment's region label, if any.
        price: The deployment's price override, if any (else the price table is used).
    """

    alias: str
    deployment: str
    provider: str
    model: str
    region: str | None = None
    price: Price | None = None


@dataclass(frozen=True)
class Attempt:
    """A deployment the gateway tried, or skipped, before the one that answered.

    Attributes:
        served: The deployment.
        outcome: ``failed`` (it was called and failed, retries included), ``denied`` (by
            policy), ``circuit_open`` (its breaker is open) or ``outside_residency``.
        error: Why, for a person.
    """

    served: Served
    outcome: Literal["failed", "denied", "circuit_open", "outside_residency"]
    error: str


@dataclass(frozen=True)
class ModelResponse:
    """What a provider returned.

    Attributes:
        decision: The parsed decision, or ``None`` when the output could not be parsed.
        raw: The model's raw output text (or a JSON rendering of native tool calls).
        usage: Token counts.
        error: Why ``decision`` is ``None``, phrased for the model to correct itself.
        response_model: The model name the provider reports, if any.
        served: The deployment that answered (set by the gateway).
        cost_usd: The call's cost in US dollars (set by the gateway when it has a pricer;
            ``0`` for a cache hit), or ``None`` when not priced.
        cache_hit: The response came from the exact-match response cache.
        usage_missing: The provider reported no usage (the call is billed from its budget
            reservation and flagged).
        attempts: Deployments tried or skipped before the one that answered, in order (set by
            the gateway; each is a failover the runtime audits).
    """

    decision: Decision | None
    raw: str
    usage: Usage = Usage()
    error: str | None = None
    response_model: str | None = None
    served: Served | None = None
    cost_usd: Decimal | None = None
    cache_hit: bool = False
    usage_missing: bool = False
    attempts: tuple[Attempt, ...] = ()


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
