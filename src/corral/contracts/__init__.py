"""Contracts: the declarative ``Agent`` and ``Tool`` documents and their loader."""

from corral.contracts._loader import KINDS, Document, load_documents, load_paths, parse_document
from corral.contracts._models import (
    API_VERSION,
    Agent,
    AgentLimits,
    AgentModel,
    AgentSpec,
    AgentTools,
    ApprovalRule,
    EvaluationGate,
    MemoryScope,
    Metadata,
    Observability,
    Tool,
    ToolMetadata,
    ToolSpec,
)

__all__ = [
    "API_VERSION",
    "KINDS",
    "Agent",
    "AgentLimits",
    "AgentModel",
    "AgentSpec",
    "AgentTools",
    "ApprovalRule",
    "Document",
    "EvaluationGate",
    "MemoryScope",
    "Metadata",
    "Observability",
    "Tool",
    "ToolMetadata",
    "ToolSpec",
    "load_documents",
    "load_paths",
    "parse_document",
]
