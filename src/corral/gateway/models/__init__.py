"""The model gateway: aliases over deployments, and providers (OpenAI-compatible, Anthropic, local).

Every provider implements :class:`ModelProvider`: one :class:`ModelRequest` in, one
:class:`ModelResponse` (a parsed :data:`Decision`, raw text, usage) out.

:class:`OpenAICompatibleProvider` is imported on first use: the ``openai`` SDK is about 500
modules and 40 MB, which a worker or server whose providers are all something else (a
``ScriptedModel``, no provider configured) never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.gateway.models._base import (
    Attempt,
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
from corral.gateway.models._cache import (
    CachedResponse,
    ResponseCache,
    is_deterministic,
    response_cache_digest,
    response_document,
    response_from_document,
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
from corral.gateway.models._gateway import (
    FAILOVERS,
    ModelAuthorizer,
    ModelCallScope,
    ModelGateway,
    SecretRenderer,
    current_model_call,
)
from corral.gateway.models._inbound import (
    ChatCompletionsRequest,
    InboundChat,
    InboundReply,
    ModelCallCosts,
    NoCosts,
    RecordWriter,
    Reservation,
)
from corral.gateway.models._local import (
    LOCAL_MODEL_ALIAS,
    LocalModelServer,
    find_default_model_path,
    local_provider,
)
from corral.gateway.models._passthrough import WireChat, usage_of
from corral.gateway.models._pricing import (
    BYTES_PER_TOKEN,
    DEFAULT_MAX_OUTPUT_TOKENS,
    FREE_PROVIDERS,
    Pricer,
    cost_upper_bound,
    model_price,
    price_call,
    settings_override,
)
from corral.gateway.models._resilience import (
    RetryPolicy,
    retry_after_seconds,
)
from corral.gateway.models._routing import (
    Deployment,
    ModelCatalog,
    ModelResolver,
    TenantModelsLoader,
    deployments_of,
)

if TYPE_CHECKING:
    from corral.gateway.models._anthropic import AnthropicProvider
    from corral.gateway.models._openai import OpenAICompatibleProvider

__all__ = [
    "BYTES_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "DEFAULT_MAX_STRING",
    "FAILOVERS",
    "FREE_PROVIDERS",
    "LOCAL_MODEL_ALIAS",
    "MAX_GRAMMAR_REPEAT",
    "MAX_SOURCES",
    "AnthropicProvider",
    "Attempt",
    "CachedResponse",
    "ChatCompletionsRequest",
    "Decision",
    "Deployment",
    "FinalAnswer",
    "InboundChat",
    "InboundReply",
    "LocalModelServer",
    "Message",
    "ModelAuthorizer",
    "ModelCallCosts",
    "ModelCallScope",
    "ModelCatalog",
    "ModelGateway",
    "ModelProvider",
    "ModelRequest",
    "ModelResolver",
    "ModelResponse",
    "NoCosts",
    "OpenAICompatibleProvider",
    "Price",
    "Pricer",
    "RecordWriter",
    "Reservation",
    "ResponseCache",
    "RetryPolicy",
    "SecretRenderer",
    "Served",
    "TenantModelsLoader",
    "ToolCall",
    "ToolDefinition",
    "Usage",
    "WireChat",
    "cost_upper_bound",
    "current_model_call",
    "decision_instructions",
    "decision_schema",
    "deployments_of",
    "find_default_model_path",
    "is_deterministic",
    "local_provider",
    "model_price",
    "parse_json_decision",
    "price_call",
    "repeated_phrase",
    "response_cache_digest",
    "response_document",
    "response_from_document",
    "retry_after_seconds",
    "settings_override",
    "usage_of",
]


def __getattr__(name: str) -> Any:
    """Import the SDK-backed providers when first asked for (PEP 562)."""
    if name == "OpenAICompatibleProvider":
        from corral.gateway.models._openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    if name == "AnthropicProvider":
        from corral.gateway.models._anthropic import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
