"""The version a new run gets while an experiment or rollout splits its agent's stage.

Called inside the transaction that creates the run (:mod:`corral.runtime._service`): the
registry's traffic split picks the variant by a deterministic hash
(:func:`corral.registry.assign_version`); the run records it, and a rollout's shadow step
adds a copy of the run for the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from corral.contracts import Agent
from corral.observability import new_trace_id
from corral.registry import AgentVersionRow, Assignment, assign_version, record_assignment
from corral.runtime._tables import RunRow
from corral.store import new_id

__all__ = ["assigned_version", "record_variant"]

_VERSIONS = cast(Table, AgentVersionRow.__table__)
_RUNS = cast(Table, RunRow.__table__)


@dataclass(frozen=True)
class _Found:
    """The agent and version a run runs (the shape of the stage-version row it replaces)."""

    id: str
    status: str
    version_id: str
    version: str
    digest: str


def assigned_version(
    connection: Connection,
    found: Any,
    *,
    tenant_id: str,
    stage: str,
    run_id: str,
    requested_by: str,
    session_id: str | None = None,
) -> tuple[Any, Assignment | None]:
    """``found`` (agent and the stage's version), or the version the split assigns instead."""
    assignment = assign_version(
        connection,
        tenant_id=tenant_id,
        agent_id=found.id,
        stage=stage,
        run_id=run_id,
        requested_by=requested_by,
        session_id=session_id,
    )
    if assignment is None:
        return found, None
    chosen = _Found(
        found.id, found.status, assignment.version_id, assignment.version, assignment.digest
    )
    return chosen, assignment


def record_variant(
    connection: Connection, assignment: Assignment | None, run: dict[str, Any], now: datetime
) -> dict[str, str]:
    """Record the run's variant (and start its shadow copy); returns it for the audit event.

    A shadow copy is a second run of the shadow version on the same task in stage
    ``shadow``, where the default policy denies every tool that is not read-only. Its result
    is never returned to the caller, who only knows the live run's id.
    """
    if assignment is None:
        return {}
    tenant_id, run_id = run["tenant_id"], run["id"]
    record_assignment(connection, assignment, tenant_id=tenant_id, run_id=run_id, now=now)
    if assignment.shadow_version_id is not None:
        version, document = connection.execute(
            select(_VERSIONS.c.version, _VERSIONS.c.document).where(
                _VERSIONS.c.id == assignment.shadow_version_id
            )
        ).one()
        shadow = {
            **run,
            "id": new_id("run"),
            "agent_version_id": assignment.shadow_version_id,
            "agent_version": version,
            "model": Agent.model_validate(document).spec.model.default,
            "stage": "shadow",
            "trace_id": new_trace_id(),
        }
        connection.execute(_RUNS.insert(), shadow)
        record_assignment(
            connection,
            Assignment(assignment.split_id, assignment.kind, "shadow", "", version, "", None),
            tenant_id=tenant_id,
            run_id=shadow["id"],
            now=now,
            shadow_of=run_id,
        )
    return {"split": assignment.split_id, "variant": assignment.variant}
