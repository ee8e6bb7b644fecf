"""Registry rows: agents and tools, each with immutable content-addressed versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, JSONType, TenantMixin, utcnow

__all__ = [
    "AgentRow",
    "AgentVersionRow",
    "McpServerRow",
    "McpServerVersionRow",
    "McpToolPinRow",
    "ModelRow",
    "ModelVersionRow",
    "PromotionRow",
    "PromptRow",
    "PromptVersionRow",
    "StageBindingRow",
    "ToolRow",
    "ToolVersionRow",
    "TrafficAssignmentRow",
    "TrafficSplitRow",
]


class AgentRow(TenantMixin, Base):
    """An agent's identity; its content lives in :class:`AgentVersionRow`."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    latest_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentVersionRow(TenantMixin, Base):
    """One immutable version of an agent: the canonical spec and its SHA-256 digest."""

    __tablename__ = "agent_versions"
    __table_args__ = (UniqueConstraint("agent_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    """1 for the first version, +1 for each new one."""
    digest: Mapped[str] = mapped_column(String(71))
    """``sha256:<hex>`` of the canonical JSON of the document (version excluded)."""
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolRow(TenantMixin, Base):
    """A tool's identity; its schema and effects live in :class:`ToolVersionRow`."""

    __tablename__ = "tools"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    side_effect: Mapped[str] = mapped_column(String(16))
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolVersionRow(TenantMixin, Base):
    """One immutable version of a tool."""

    __tablename__ = "tool_versions"
    __table_args__ = (UniqueConstraint("tool_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tool_id: Mapped[str] = mapped_column(ForeignKey("tools.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StageBindingRow(TenantMixin, Base):
    """Which version of an agent a stage (``dev``, ``staging``, ``production``...) runs."""

    __tablename__ = "stage_bindings"
    __table_args__ = (UniqueConstraint("agent_id", "stage"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[str] = mapped_column(ForeignKey("agent_versions.id"))
    version: Mapped[str] = mapped_column(String(32))
    bound_by: Mapped[str] = mapped_column(String(200))
    bound_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromotionRow(TenantMixin, Base):
    """History of stage bindings: promotions and rollbacks, including those awaiting approval."""

    __tablename__ = "promotions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    agent_name: Mapped[str] = mapped_column(String(63))
    stage: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    """``promote`` or ``rollback``."""
    version: Mapped[str] = mapped_column(String(32))
    previous_version: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))
    """``pending_approval``, ``done`` or ``rejected``."""
    approval_id: Mapped[str | None] = mapped_column(String(40))
    policy_decision_id: Mapped[str | None] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class TrafficSplitRow(TenantMixin, Base):
    """How new runs of an agent in a stage are split between versions (an experiment, a rollout).

    While a row exists for (agent, stage), a run created for that stage runs the version of
    the variant its key hashes to (:func:`corral.registry.assign_version`) instead of the
    version bound to the stage. At most one split per agent and stage.
    """

    __tablename__ = "traffic_splits"
    __table_args__ = (UniqueConstraint("agent_id", "stage"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """The id of the experiment or rollout that owns the split (its hash salt too)."""
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    """``experiment`` or ``rollout``."""
    key_by: Mapped[str] = mapped_column(String(16))
    """What is hashed: ``run`` (the run id) or ``user`` (the requesting principal)."""
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    """``[{"name", "version_id", "version", "weight_bp"}]``; weights in basis points, sum 10,000."""
    shadow_version_id: Mapped[str | None] = mapped_column(String(40))
    """A version that also runs, in stage ``shadow``, on a copy of every live task (or none)."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrafficAssignmentRow(TenantMixin, Base):
    """Which variant of a traffic split a run got (its version is the run's version)."""

    __tablename__ = "traffic_assignments"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    split_id: Mapped[str] = mapped_column(String(40), index=True)
    variant: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(32))
    shadow_of: Mapped[str | None] = mapped_column(String(40))
    """For a shadow run: the live run whose task it copied."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class McpServerRow(TenantMixin, Base):
    """A registered upstream MCP server; its spec lives in :class:`McpServerVersionRow`."""

    __tablename__ = "mcp_servers"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    transport: Mapped[str] = mapped_column(String(16))
    """``stdio`` or ``streamable_http``."""
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class McpServerVersionRow(TenantMixin, Base):
    """One immutable version of an ``McpServer`` document."""

    __tablename__ = "mcp_server_versions"
    __table_args__ = (UniqueConstraint("server_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    server_id: Mapped[str] = mapped_column(ForeignKey("mcp_servers.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class McpToolPinRow(TenantMixin, Base):
    """The pin of a tool imported from an MCP server.

    It holds the upstream digest the last sync saw and the digest a person (or the first sync)
    approved; the tool is ``QUARANTINED`` (not offered, not callable) while the two differ.
    """

    __tablename__ = "mcp_tool_pins"
    __table_args__ = (UniqueConstraint("tenant_id", "tool_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tool_name: Mapped[str] = mapped_column(String(63))
    """Corral's name of the tool, ``<server>.<tool>``."""
    server_name: Mapped[str] = mapped_column(String(63), index=True)
    upstream_name: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(71))
    """``sha256:<hex>`` of the upstream tool as the last sync saw it."""
    approved_digest: Mapped[str | None] = mapped_column(String(71))
    status: Mapped[str] = mapped_column(String(16))
    """``ACTIVE`` (``digest == approved_digest``) or ``QUARANTINED``."""
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(TenantMixin, Base):
    """A model alias of a tenant; its deployments live in :class:`ModelVersionRow`."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    """The alias (``default``, ``fast``...)."""
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(TenantMixin, Base):
    """One immutable version of a ``Model`` document."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptRow(TenantMixin, Base):
    """A prompt's identity; its text lives in :class:`PromptVersionRow`."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptVersionRow(TenantMixin, Base):
    """One immutable version of a ``Prompt`` document."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("prompt_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    """``sha256:<hex>`` of the canonical JSON of the document (version excluded)."""
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
