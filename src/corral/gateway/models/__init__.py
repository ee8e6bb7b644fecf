"""The model gateway's providers: OpenAI-compatible endpoints and the embedded local model.

Every provider implements :class:`ModelProvider`: one :class:`ModelRequest` in, one
:class:`ModelResponse` (a parsed :data:`Decision`, raw text, usage) out.

:class:`OpenAICompatibleProvider` is imported on first use: the ``openai`` SDK is about 500
modules and 40 MB, which a worker or server whose providers are all something else (a
``ScriptedModel``, no provider configured) never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.gateway.models._base import (
    Decision,
    FinalAnswer,
    Message,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    Price,
    Served,
    ToolCall,
    ToolDefinition,
    Usage,
)
from corral.gateway.models._decision import (
    DEFAULT_MAX_STRING,
    MAX_GRAMMAR_REPEAT,
    decision_instructions,
    decision_schema,
    parse_json_decision,
)
from corral.gateway.models._gateway import ModelGateway
from corral.gateway.models._inbound import (
    ChatCompletionsRequest,
    InboundChat,
    InboundReply,
    ModelCallCosts,
    NoCosts,
    Reservation,
)
from corral.gateway.models._local import (
    LOCAL_MODEL_ALIAS,
    LocalModelServer,
    find_default_model_path,
    local_provider,
)
from corral.gateway.models._passthrough import WireChat, usage_of

if TYPE_CHECKING:
    from corral.gateway.models._openai import OpenAICompatibleProvider

__all__ = [
    "DEFAULT_MAX_STRING",
    "LOCAL_MODEL_ALIAS",
    "MAX_GRAMMAR_REPEAT",
    "ChatCompletionsRequest",
    "Decision",
    "FinalAnswer",
    "InboundChat",
    "InboundReply",
    "LocalModelServer",
    "Message",
    "ModelCallCosts",
    "ModelGateway",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "NoCosts",
    "OpenAICompatibleProvider",
    "Price",
    "Reservation",
    "Served",
    "ToolCall",
    "ToolDefinition",
    "Usage",
    "WireChat",
    "decision_instructions",
    "decision_schema",
    "find_default_model_path",
    "local_provider",
    "parse_json_decision",
    "usage_of",
]


def __getattr__(name: str) -> Any:
    """Import the ``openai``-backed provider when it is first asked for (PEP 562)."""
    if name == "OpenAICompatibleProvider":
        from corral.gateway.models._openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
