"""The registry: agents and tools as immutable, content-addressed versions, and releases.

A release binds an agent version to a stage (``promote``, ``rollback``); runs in a stage run
the version bound to it.
"""

from corral.registry._models import BUILTIN_DEFAULT_MODEL, default_models, tenant_models
from corral.registry._prompts import (
    get_prompt_version,
    list_prompt_versions,
    list_prompts,
    prompt_diff,
)
from corral.registry._reads import (
    OfferedTool,
    load_agent_version,
    load_stage_agent,
    offered_tools,
)
from corral.registry._releases import (
    DEV_STAGE,
    Promotion,
    StageBinding,
    complete_promotion,
    list_promotions,
    promote,
    reject_promotion,
    rollback,
    stage_bindings,
)
from corral.registry._service import (
    FIRST_VERSION,
    ApplyResult,
    apply_documents,
    bind_stage,
    digest_of,
    document_of,
    get_agent,
    get_agent_version,
    latest_agent_versions,
    list_agent_versions,
    list_agents,
    list_tools,
    next_patch,
)
from corral.registry._tables import (
    AgentRow,
    AgentVersionRow,
    McpServerRow,
    McpServerVersionRow,
    McpToolPinRow,
    ModelRow,
    ModelVersionRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)

__all__ = [
    "BUILTIN_DEFAULT_MODEL",
    "DEV_STAGE",
    "FIRST_VERSION",
    "AgentRow",
    "AgentVersionRow",
    "ApplyResult",
    "McpServerRow",
    "McpServerVersionRow",
    "McpToolPinRow",
    "ModelRow",
    "ModelVersionRow",
    "OfferedTool",
    "Promotion",
    "StageBinding",
    "StageBindingRow",
    "ToolRow",
    "ToolVersionRow",
    "apply_documents",
    "bind_stage",
    "complete_promotion",
    "default_models",
    "digest_of",
    "document_of",
    "get_agent",
    "get_agent_version",
    "get_prompt_version",
    "latest_agent_versions",
    "list_agent_versions",
    "list_agents",
    "list_promotions",
    "list_prompt_versions",
    "list_prompts",
    "list_tools",
    "load_agent_version",
    "load_stage_agent",
    "next_patch",
    "offered_tools",
    "promote",
    "prompt_diff",
    "reject_promotion",
    "rollback",
    "stage_bindings",
    "tenant_models",
]
