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
    MAX_SOURCES,
    decision_instructions,
    decision_schema,
    parse_json_decision,
    repeated_phrase,
)
from corral.gateway.models._gateway import ModelGateway
from corral.gateway.models._local import (
    LOCAL_MODEL_ALIAS,
    LocalModelServer,
    find_default_model_path,
    local_provider,
)

if TYPE_CHECKING:
    from corral.gateway.models._openai import OpenAICompatibleProvider

__all__ = [
    "DEFAULT_MAX_STRING",
    "LOCAL_MODEL_ALIAS",
    "MAX_GRAMMAR_REPEAT",
    "MAX_SOURCES",
    "Decision",
    "FinalAnswer",
    "LocalModelServer",
    "Message",
    "ModelGateway",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "OpenAICompatibleProvider",
    "Price",
    "Served",
    "ToolCall",
    "ToolDefinition",
    "Usage",
    "decision_instructions",
    "decision_schema",
    "find_default_model_path",
    "local_provider",
    "parse_json_decision",
    "repeated_phrase",
]


def __getattr__(name: str) -> Any:
    """Import the ``openai``-backed provider when it is first asked for (PEP 562)."""
    if name == "OpenAICompatibleProvider":
        from corral.gateway.models._openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
