"""A provider for any OpenAI-compatible chat completions endpoint, through the ``openai`` SDK.

OpenAI itself, vLLM, Ollama, llama.cpp's server and hosted open models all speak the same
``POST /v1/chat/completions``. Two ways of getting a decision out of them:

- ``native``: tools are sent as OpenAI ``tools=`` and the model answers with ``tool_calls``.
- ``json``: no ``tools=``; the model is told (system prompt) and constrained (``response_format``)
  to reply with one JSON decision (:func:`~corral.gateway.models.decision_schema`). This is the
  mode for small local models, whose native tool calling is unreliable or missing.

Quirks handled here, each seen on a real server:

- OpenAI function names must match ``^[a-zA-Z0-9_-]+$``; Corral tool names contain dots
  (``fs.read_file``), so ``.`` is sent as ``__`` and mapped back on return.
- llama.cpp's server rejects ``"content": null`` on assistant messages; ``""`` is sent instead.
- llama.cpp's server answers HTTP 500 to ``response_format={"type": "json_schema", ...}`` but
  honours ``{"type": "json_object", "schema": ...}`` (it compiles the schema into a grammar), so
  json mode sends the latter.
- Servers without ``tools=`` may not accept the ``tool`` role, so json mode renders earlier tool
  calls as JSON decisions in assistant turns and tool results as user turns.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, cast

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)
from openai.types.chat.completion_create_params import ResponseFormat
from openai.types.completion_usage import CompletionUsage

from corral.errors import ModelAPIError
from corral.gateway.models._base import (
    Decision,
    FinalAnswer,
    Message,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolDefinition,
    Usage,
)
from corral.gateway.models._decision import (
    decision_instructions,
    decision_schema,
    parse_json_decision,
)
from corral.gateway.models._resilience import retry_after_seconds
from corral.settings import OpenAISettings

__all__ = ["Decoding", "OpenAICompatibleProvider"]

_MAX_ERROR_CHARS = 500
"""Provider error bodies are cut to this many characters in ``ModelAPIError`` messages."""


def _wire_name(name: str) -> str:
    """The OpenAI function name for tool ``name`` (``fs.read_file`` -> ``fs__read_file``)."""
    return name.replace(".", "__")


def _decision_text(call: ToolCall) -> str:
    """A tool call as the JSON decision a json-mode model would have written."""
    return json.dumps({"tool": call.name, "arguments": call.arguments}, ensure_ascii=False)


class OpenAICompatibleProvider:
    """A :class:`~corral.gateway.models.ModelProvider` for an OpenAI-compatible endpoint.

    One instance holds one ``openai.AsyncOpenAI`` client (and its connection pool); close it
    with :meth:`aclose`. Calls are not retried here: the SDK's own retries are disabled so that
    retries, fallback and circuit breaking happen in one place, the model gateway.

    Args:
        name: Provider name, the part before ``/`` in model names (``openai``, ``local``...).
        base_url: Endpoint including ``/v1`` (``http://127.0.0.1:8421/v1``). ``None``: the SDK's
            default, ``https://api.openai.com/v1`` (or ``OPENAI_BASE_URL``).
        api_key: Bearer token. ``None``: the SDK reads ``OPENAI_API_KEY``.
        tool_calling: ``native`` (OpenAI ``tools=``) or ``json`` (schema-constrained JSON decision).
        timeout_seconds: Per-request timeout in seconds.
        max_output_tokens: Cap on generated tokens when the request does not set one.
        decoding: Defaults for the request's decoding fields, each applied when the request
            leaves it unset (``repeat_penalty``, ``frequency_penalty``, ``seed``), and the
            ``temperature`` and ``max_answer_chars`` cap for every call when set.

    Raises:
        ModelAPIError: no API key was given and ``OPENAI_API_KEY`` is not set.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        tool_calling: Literal["native", "json"] = "native",
        timeout_seconds: float = 120.0,
        max_output_tokens: int = 1024,
        decoding: Decoding | None = None,
    ) -> None:
        self.name = name
        self.decoding = decoding or Decoding()
        self.tool_calling: Literal["native", "json"] = tool_calling
        self.timeout_seconds = timeout_seconds
        self.max_output_tokens = max_output_tokens
        try:
            self._client = openai.AsyncOpenAI(
                api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=0
            )
        except openai.OpenAIError as exc:
            raise ModelAPIError(
                f"Model provider {name!r} has no API key: pass api_key "
                "(CORRAL_OPENAI__API_KEY for provider 'openai') or set OPENAI_API_KEY.",
                provider=name,
            ) from exc

    @classmethod
    def from_settings(
        cls, settings: OpenAISettings, *, name: str = "openai"
    ) -> OpenAICompatibleProvider:
        """A provider configured from ``CORRAL_OPENAI__*`` settings.

        Args:
            settings: The ``openai`` settings group.
            name: Provider name.

        Returns:
            The provider.

        Raises:
            ModelAPIError: no API key is configured anywhere.
        """
        return cls(
            name,
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            tool_calling=settings.tool_calling,
            timeout_seconds=settings.request_timeout_seconds,
            max_output_tokens=settings.max_output_tokens,
        )

    @property
    def base_url(self) -> str:
        """The endpoint's base URL as the SDK uses it (ends with ``/``)."""
        return str(self._client.base_url)

    def wire_endpoint(self) -> tuple[str, str | None, float]:
        """``(base URL, API key, timeout in seconds)``, for raw OpenAI-wire passthrough calls.

        The inbound ``/v1/chat/completions`` forwards a caller's request body unchanged
        (:class:`~corral.gateway.models._passthrough.WireChat`) to the same endpoint.
        """
        return str(self._client.base_url), self._client.api_key or None, self.timeout_seconds

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Make one chat completion call and parse its decision.

        An output that cannot be parsed into a decision (bad JSON, unknown tool, empty reply) is
        not an error: it comes back as ``ModelResponse(decision=None, error=...)`` with the
        error phrased for the model, so the run loop can ask it to correct itself.

        Args:
            request: The model call.

        Returns:
            The parsed decision, raw output, token usage and reported model name.

        Raises:
            ModelAPIError: transport failure, timeout, an HTTP error status, or a response
                without choices. ``status_code`` is set for HTTP errors.
        """
        request = self.decoding.apply(request)
        json_mode = self.tool_calling == "json"
        messages = _json_mode_messages(request) if json_mode else _native_messages(request)
        tools: list[ChatCompletionFunctionToolParam] = [
            {
                "type": "function",
                "function": {
                    "name": _wire_name(tool.name),
                    "description": tool.description,
                    "parameters": tool.input_schema,
                },
            }
            for tool in request.tools
        ]
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=messages,
                temperature=request.temperature,
                max_tokens=request.max_output_tokens or self.max_output_tokens,
                tools=tools if tools and not json_mode else openai.omit,
                response_format=_response_format(request) if json_mode else openai.omit,
                seed=request.seed if request.seed is not None else openai.omit,
                frequency_penalty=(
                    request.frequency_penalty
                    if request.frequency_penalty is not None
                    else openai.omit
                ),
                # llama.cpp's own sampling parameter, not in OpenAI's API.
                extra_body=(
                    {"repeat_penalty": request.repeat_penalty}
                    if request.repeat_penalty is not None
                    else None
                ),
            )
        except openai.APIError as exc:
            raise self._api_error(exc) from exc
        return self._response(completion, request)

    def _response(self, completion: ChatCompletion, request: ModelRequest) -> ModelResponse:
        if not completion.choices:
            raise ModelAPIError(
                f"Model provider {self.name!r} at {self.base_url} returned no choices "
                f"(HTTP 200, model {completion.model!r}).",
                provider=self.name,
                status_code=200,
            )
        message = completion.choices[0].message
        if self.tool_calling == "json":
            decision, raw, error = _json_decision(message, request.tools)
        else:
            decision, raw, error = _native_decision(message, request.tools)
        return ModelResponse(
            decision=decision,
            raw=raw,
            usage=_usage(completion.usage),
            error=error,
            response_model=completion.model or None,
            usage_missing=completion.usage is None,
        )

    def _api_error(self, exc: openai.APIError) -> ModelAPIError:
        where = f"Model provider {self.name!r} at {self.base_url}"
        if isinstance(exc, openai.APIStatusError):
            detail = exc.message[:_MAX_ERROR_CHARS]
            status = exc.status_code
            return ModelAPIError(
                f"{where} returned HTTP {status}: {detail}",
                provider=self.name,
                status_code=status,
                retryable=status in (408, 429) or status >= 500,
                retry_after_seconds=retry_after_seconds(exc.response.headers.get("retry-after")),
            )
        if isinstance(exc, openai.APITimeoutError):
            message = f"{where} did not answer within {self.timeout_seconds} s (no HTTP status)."
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            message = f"{where} could not be reached (no HTTP status): {cause}. Is it running?"
        else:
            message = f"{where} returned an invalid response: {str(exc)[:_MAX_ERROR_CHARS]}"
            return ModelAPIError(message, provider=self.name)
        # Timeouts and connection errors: the same call may well succeed next time.
        return ModelAPIError(message, provider=self.name, retryable=True)


@dataclass(frozen=True)
class Decoding:
    """A provider's decoding defaults (the embedded model's come from ``LocalModelSettings``).

    Attributes:
        temperature: Sampling temperature of every call, or ``None`` for the request's.
        repeat_penalty: llama.cpp's repetition penalty when the request sets none.
        frequency_penalty: Frequency penalty when the request sets none.
        seed: Sampling seed when the request sets none.
        max_answer_chars: Cap on the final answer's length in characters (the smaller of it
            and the request's applies), or ``None``.
    """

    temperature: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_answer_chars: int | None = None

    def apply(self, request: ModelRequest) -> ModelRequest:
        """``request`` with these defaults filled in."""
        changes: dict[str, Any] = {}
        if self.temperature is not None:
            changes["temperature"] = self.temperature
        for name in ("repeat_penalty", "frequency_penalty", "seed"):
            if getattr(request, name) is None and getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.max_answer_chars is not None:
            changes["max_answer_chars"] = min(request.max_answer_chars, self.max_answer_chars)
        return dataclasses.replace(request, **changes) if changes else request


def _response_format(request: ModelRequest) -> ResponseFormat:
    # ``schema`` inside ``json_object`` is llama.cpp's (and vLLM's) extension, not in the SDK's
    # types; the SDK passes unknown keys through unchanged.
    schema = decision_schema(
        request.tools, max_answer_chars=request.max_answer_chars, sources=request.answer_sources
    )
    return cast("ResponseFormat", {"type": "json_object", "schema": schema})


def _native_messages(request: ModelRequest) -> list[ChatCompletionMessageParam]:
    """Messages for native tool calling: OpenAI ``tool_calls`` and ``tool`` messages."""
    out: list[ChatCompletionMessageParam] = []
    for message in request.messages:
        if message.role == "assistant":
            calls: list[ChatCompletionMessageFunctionToolCallParam] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": _wire_name(call.name),
                        "arguments": json.dumps(call.arguments, ensure_ascii=False),
                    },
                }
                for call in message.tool_calls
            ]
            if calls:
                out.append({"role": "assistant", "content": message.content, "tool_calls": calls})
            else:
                out.append({"role": "assistant", "content": message.content})
        elif message.role == "tool":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": message.tool_call_id or "",
                    "content": message.content,
                }
            )
        elif message.role == "system":
            out.append({"role": "system", "content": message.content})
        else:
            out.append({"role": "user", "content": message.content})
    return out


def _json_mode_messages(request: ModelRequest) -> list[ChatCompletionMessageParam]:
    """Messages for json mode: only system/user/assistant roles, decisions as JSON text.

    The decision instructions are appended to the first system message (or become one).
    Consecutive user or assistant turns are merged, because several chat templates (Mistral,
    Gemma) insist that roles alternate.
    """
    instructions = decision_instructions(
        request.tools, cite_sources=request.answer_sources is not None
    )
    tool_names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    turns: list[tuple[Literal["system", "user", "assistant"], str]] = []
    if not request.messages or request.messages[0].role != "system":
        turns.append(("system", instructions))
    for index, message in enumerate(request.messages):
        if message.role == "system":
            content = f"{message.content}\n\n{instructions}" if index == 0 else message.content
            turns.append(("system", content))
        elif message.role == "tool":
            turns.append(("user", _tool_result_text(message, tool_names)))
        elif message.role == "assistant" and message.tool_calls:
            turns.append(("assistant", "\n".join(_decision_text(c) for c in message.tool_calls)))
        else:
            turns.append((message.role, message.content))
    out: list[ChatCompletionMessageParam] = []
    for role, content in turns:
        previous = out[-1] if out else None
        if previous is not None and role != "system" and previous["role"] == role:
            previous["content"] = f"{previous.get('content')}\n\n{content}"
        elif role == "system":
            out.append({"role": "system", "content": content})
        elif role == "user":
            out.append({"role": "user", "content": content})
        else:
            out.append({"role": "assistant", "content": content})
    return out


def _tool_result_text(message: Message, tool_names: dict[str, str]) -> str:
    """A tool result as the text of a user turn, naming the call it answers."""
    call_id = message.tool_call_id or "?"
    name = tool_names.get(call_id)
    label = f"call {call_id} ({name})" if name else f"call {call_id}"
    return f"Tool result for {label}:\n{message.content}"


def _json_decision(
    message: ChatCompletionMessage, tools: list[ToolDefinition]
) -> tuple[Decision | None, str, str | None]:
    """Parse a json-mode reply: ``(decision, raw, error)``."""
    raw = message.content or ""
    try:
        return parse_json_decision(raw, tools), raw, None
    except ValueError as exc:
        return None, raw, str(exc)


def _native_decision(
    message: ChatCompletionMessage, tools: list[ToolDefinition]
) -> tuple[Decision | None, str, str | None]:
    """Parse a native reply (``tool_calls`` or text): ``(decision, raw, error)``."""
    if not message.tool_calls:
        if not message.content:
            return None, "", "your reply was empty; call a tool or give your final answer"
        return FinalAnswer(message.content), message.content, None
    by_wire_name = {_wire_name(tool.name): tool.name for tool in tools}
    calls: list[ToolCall] = []
    rendered: list[dict[str, Any]] = []
    error: str | None = None
    for item in message.tool_calls:
        if item.type != "function":
            rendered.append({"id": item.id, "type": item.type})
            error = error or f"tool call type {item.type!r} is not supported; call a function"
            continue
        wire_name, text = item.function.name, item.function.arguments
        name = by_wire_name.get(wire_name, wire_name)
        arguments, problem = _parse_arguments(name, text)
        shown = arguments if arguments is not None else text
        rendered.append({"id": item.id, "tool": name, "arguments": shown})
        if wire_name not in by_wire_name:
            known = ", ".join(by_wire_name.values()) or "none"
            problem = f"unknown tool {name!r}; available tools: {known}"
        if problem or arguments is None:
            error = error or problem
            continue
        calls.append(ToolCall(id=item.id, name=name, arguments=arguments))
    raw = json.dumps(rendered, ensure_ascii=False)
    if error is not None:
        return None, raw, error
    return calls, raw, None


def _parse_arguments(name: str, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A native call's arguments string as an object, or ``(None, error for the model)``."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the arguments of your call to {name!r} are not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return None, f"the arguments of your call to {name!r} must be a JSON object"
    return value, None


def _usage(usage: CompletionUsage | None) -> Usage:
    """The call's :class:`Usage` from OpenAI's ``usage`` block (all zero when it is absent).

    ``prompt_tokens_details.cached_tokens`` are prompt tokens read from the provider's prompt
    cache; ``completion_tokens_details.reasoning_tokens`` are hidden reasoning tokens. Both are
    subsets of the prompt and completion counts. OpenAI has no cache-write count.
    """
    if usage is None:
        return Usage()
    prompt_details = usage.prompt_tokens_details
    completion_details = usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cache_read_tokens=(prompt_details.cached_tokens or 0) if prompt_details else 0,
        reasoning_tokens=((completion_details.reasoning_tokens or 0) if completion_details else 0),
    )
