"""A provider for Anthropic's Messages API, through the official ``anthropic`` SDK.

Imported only when a deployment uses provider ``anthropic`` (the SDK is large). Mapping:

- ``system`` messages become the request's ``system`` text; ``user`` and ``assistant`` turns
  stay; an assistant turn's tool calls become ``tool_use`` blocks and ``tool`` messages become
  ``tool_result`` blocks of a user turn (consecutive results share one turn).
- Tools are sent with ``input_schema``; names are sent with ``.`` as ``__`` (Anthropic tool
  names match ``^[a-zA-Z0-9_-]{1,64}$``) and mapped back.
- Usage: ``input_tokens`` of :class:`Usage` is every prompt token: Anthropic's
  ``input_tokens`` (uncached) plus ``cache_read_input_tokens`` plus
  ``cache_creation_input_tokens``; the two cache counts are kept apart too.
"""

from __future__ import annotations

import json
from typing import Any, cast

import anthropic

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
from corral.gateway.models._resilience import retry_after_seconds

__all__ = ["AnthropicProvider", "anthropic_messages", "anthropic_usage"]

_MAX_ERROR_CHARS = 500


def _wire_name(name: str) -> str:
    return name.replace(".", "__")


class AnthropicProvider:
    """A :class:`~corral.gateway.models.ModelProvider` for Anthropic's Messages API.

    The SDK's own retries are off: retries, fallback and breakers live in the model gateway.

    Args:
        name: Provider name (``anthropic``).
        base_url: Endpoint; ``None``: the SDK's default (or ``ANTHROPIC_BASE_URL``).
        api_key: The key; ``None``: the SDK reads ``ANTHROPIC_API_KEY``.
        timeout_seconds: Per-request timeout in seconds.
        max_output_tokens: ``max_tokens`` when the request sets none (Anthropic requires one).
    """

    def __init__(
        self,
        name: str = "anthropic",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_seconds: float = 120.0,
        max_output_tokens: int = 1024,
    ) -> None:
        self.name = name
        self.timeout_seconds = timeout_seconds
        self.max_output_tokens = max_output_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=0
        )

    @property
    def base_url(self) -> str:
        """The endpoint's base URL as the SDK uses it."""
        return str(self._client.base_url)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Make one Messages API call and parse its decision.

        Args:
            request: The model call.

        Returns:
            The parsed decision (``tool_use`` blocks or the text), raw output, usage.

        Raises:
            ModelAPIError: transport failure, timeout or an HTTP error status; retryable for
                HTTP 408, 429 and 5xx (529 "overloaded" included), timeouts and connection
                errors, with the ``Retry-After`` the API sent.
        """
        system, messages = anthropic_messages(request.messages)
        tools = [
            {
                "name": _wire_name(t.name),
                "description": t.description,
                "input_schema": t.input_schema,
            }
            for t in request.tools
        ]
        # The Messages API of this SDK release takes no sampling parameters; decoding
        # settings of an Anthropic deployment are not sent.
        try:
            message = await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_output_tokens or self.max_output_tokens,
                messages=cast("Any", messages),
                system=system if system else anthropic.omit,
                tools=cast("Any", tools) if tools else anthropic.omit,
            )
        except anthropic.APIError as exc:
            raise self._api_error(exc) from exc
        decision, raw, error = _decision(message.content, request.tools)
        return ModelResponse(
            decision=decision,
            raw=raw,
            usage=anthropic_usage(message.usage),
            error=error,
            response_model=message.model or None,
        )

    def _api_error(self, exc: anthropic.APIError) -> ModelAPIError:
        where = f"Model provider {self.name!r} at {self.base_url}"
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            return ModelAPIError(
                f"{where} returned HTTP {status}: {str(exc.message)[:_MAX_ERROR_CHARS]}",
                provider=self.name,
                status_code=status,
                retryable=status in (408, 429) or status >= 500,
                retry_after_seconds=retry_after_seconds(exc.response.headers.get("retry-after")),
            )
        if isinstance(exc, anthropic.APITimeoutError):
            message = f"{where} did not answer within {self.timeout_seconds} s (no HTTP status)."
        elif isinstance(exc, anthropic.APIConnectionError):
            message = f"{where} could not be reached (no HTTP status): {exc.__cause__ or exc}."
        else:
            return ModelAPIError(
                f"{where} returned an invalid response: {str(exc)[:_MAX_ERROR_CHARS]}",
                provider=self.name,
            )
        return ModelAPIError(message, provider=self.name, retryable=True)


def anthropic_messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Corral messages as Anthropic's ``(system, messages)``.

    Returns:
        The system text (system messages joined by blank lines) and the turns.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            system.append(message.content)
            continue
        if message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content,
            }
            role, blocks = "user", [block]
        elif message.role == "assistant":
            role = "assistant"
            blocks = [{"type": "text", "text": message.content}] if message.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": _wire_name(c.name), "input": c.arguments}
                for c in message.tool_calls
            ]
        else:
            role, blocks = "user", [{"type": "text", "text": message.content}]
        if out and out[-1]["role"] == role:  # roles alternate: merge consecutive turns
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def anthropic_usage(usage: Any) -> Usage:
    """Anthropic's usage block as :class:`Usage` (``input_tokens`` = every prompt token)."""
    if usage is None:
        return Usage()
    uncached = usage.input_tokens or 0
    cache_read = getattr(usage, "cache_read_input_tokens", None) or 0
    cache_write = getattr(usage, "cache_creation_input_tokens", None) or 0
    details = getattr(usage, "output_tokens_details", None)
    reasoning = getattr(details, "thinking_tokens", None) or 0
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=usage.output_tokens or 0,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def _decision(
    content: list[Any], tools: list[ToolDefinition]
) -> tuple[Decision | None, str, str | None]:
    by_wire = {_wire_name(t.name): t.name for t in tools}
    texts = [block.text for block in content if getattr(block, "type", None) == "text"]
    calls = [
        ToolCall(block.id, by_wire.get(block.name, block.name), dict(block.input or {}))
        for block in content
        if getattr(block, "type", None) == "tool_use"
    ]
    text = "".join(texts)
    if calls:
        raw = json.dumps(
            [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
            ensure_ascii=False,
        )
        unknown = [c.name for c in calls if c.name not in by_wire.values()]
        if unknown:
            return None, raw, f"tool {unknown[0]!r} is not offered; call one of the tools given"
        return calls, raw, None
    if not text:
        return None, "", "your reply was empty; call a tool or give your final answer"
    return FinalAnswer(text), text, None
