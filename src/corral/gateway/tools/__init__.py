"""The tool gateway: builtin workspace tools and the one path every tool call takes."""

from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._cache import (
    ToolResultCache,
    result_document,
    result_from_document,
    tool_cache_digest,
)

# Last: the direct path imports approvals and the registry, which import this package's modules.
from corral.gateway.tools._direct import (
    DirectCallResult,
    DirectCallStatus,
    DirectToolCalls,
)
from corral.gateway.tools._fs import (
    BUILTIN_TOOLS,
    BuiltinTool,
    resolve_in_workspace,
    returned_paths,
)
from corral.gateway.tools._gateway import (
    PreparedCall,
    ResolvedTool,
    ToolExecutor,
    ToolGateway,
    ToolInterceptor,
    current_tool_call,
    truncate_utf8,
    wrap_untrusted,
)
from corral.gateway.tools._guard import PathGuard, current_path_guard
from corral.gateway.tools._http import HostAllowlist, HttpExecutor
from corral.gateway.tools._openapi import OpenApiOperation, import_openapi, list_operations
from corral.gateway.tools._pipeline import (
    CallNotRecorded,
    CallOutcome,
    CallPipeline,
    CallRecorder,
    CallStatus,
    GovernedCall,
    policy_denied,
    tool_call_request,
)
from corral.gateway.tools._resilience import (
    Resilience,
    ToolRateLimiter,
    async_storage_url,
)

__all__ = [
    "BUILTIN_TOOLS",
    "BuiltinTool",
    "CallNotRecorded",
    "CallOutcome",
    "CallPipeline",
    "CallRecorder",
    "CallStatus",
    "DirectCallResult",
    "DirectCallStatus",
    "DirectToolCalls",
    "GovernedCall",
    "HostAllowlist",
    "HttpExecutor",
    "OpenApiOperation",
    "PathGuard",
    "PreparedCall",
    "Resilience",
    "ResolvedTool",
    "ToolCallContext",
    "ToolExecutor",
    "ToolGateway",
    "ToolInterceptor",
    "ToolRateLimiter",
    "ToolResult",
    "ToolResultCache",
    "async_storage_url",
    "current_path_guard",
    "current_tool_call",
    "import_openapi",
    "list_operations",
    "policy_denied",
    "resolve_in_workspace",
    "result_document",
    "result_from_document",
    "returned_paths",
    "tool_cache_digest",
    "tool_call_request",
    "truncate_utf8",
    "wrap_untrusted",
]
