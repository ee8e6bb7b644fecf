"""The registry: agents and tools as immutable, content-addressed versions."""

from corral.registry._service import (
    FIRST_VERSION,
    ApplyResult,
    apply_documents,
    bind_stage,
    count_agents,
    digest_of,
    document_of,
    get_agent,
    get_agent_version,
    list_agent_versions,
    list_agents,
    list_tools,
    next_patch,
)

__all__ = [
    "FIRST_VERSION",
    "ApplyResult",
    "apply_documents",
    "bind_stage",
    "count_agents",
    "digest_of",
    "document_of",
    "get_agent",
    "get_agent_version",
    "list_agent_versions",
    "list_agents",
    "list_tools",
    "next_patch",
]
