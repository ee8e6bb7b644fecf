"""Traffic splits: the version a new run of an agent in a stage gets in an experiment or rollout.

A split belongs to one experiment or rollout (``corral.releases``) and names variants, each an
agent version with a weight in basis points (the weights sum to 10,000). A run is assigned by
a deterministic hash, so the same key always lands on the same variant:

    bucket = int.from_bytes(SHA-256(f"{split_id}:{key}")[:8], "big") mod 10,000

and the variant is the first whose cumulative weight exceeds the bucket. The key is the run id
(``key_by = "run"``: every run drawn afresh), the requesting principal (``key_by = "user"``:
a user sees one variant for the whole split) or the run's session id (``key_by = "session"``:
the runs of one session share a variant; a run without a session id falls back to its run
id). Salting with the split id makes two splits
independent of each other. The modulo bias of 2^64 mod 10,000 is below 10^-15: negligible.

Synchronous Core statements over a ``Connection``: the runtime calls :func:`assign_version`
inside the transaction that creates the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, bindparam, select

from corral.errors import Conflict, InvalidRequest
from corral.registry._tables import AgentVersionRow, TrafficAssignmentRow, TrafficSplitRow

__all__ = [
    "BUCKETS",
    "Assignment",
    "KeyBy",
    "Variant",
    "assign_version",
    "bucket_of",
    "choose_variant",
    "put_split",
    "record_assignment",
    "remove_split",
    "reweight_split",
]

BUCKETS = 10_000
"""Hash buckets: weights are in basis points (1/10,000)."""

KeyBy = Literal["run", "user", "session"]

_SPLITS = cast(Table, TrafficSplitRow.__table__)
_ASSIGNMENTS = cast(Table, TrafficAssignmentRow.__table__)
_VERSIONS = cast(Table, AgentVersionRow.__table__)
_SPLIT_OF = select(_SPLITS).where(
    _SPLITS.c.tenant_id == bindparam("b_tenant"),
    _SPLITS.c.agent_id == bindparam("b_agent"),
    _SPLITS.c.stage == bindparam("b_stage"),
)


@dataclass(frozen=True)
class Variant:
    """One arm of a split.

    Attributes:
        name: The variant's name (``control``, ``candidate``, ``baseline``...).
        version_id: Row id of the agent version it runs.
        version: The agent version it runs (``1.2.0``).
        weight_bp: Its share of new runs, in basis points (0..10,000).
    """

    name: str
    version_id: str
    version: str
    weight_bp: int

    def as_json(self) -> dict[str, Any]:
        """The variant as stored in ``traffic_splits.variants``."""
        return {
            "name": self.name,
            "version_id": self.version_id,
            "version": self.version,
            "weight_bp": self.weight_bp,
        }


@dataclass(frozen=True)
class Assignment:
    """The variant a new run got.

    Attributes:
        split_id: The experiment or rollout id.
        kind: ``experiment`` or ``rollout``.
        variant: The variant's name.
        version_id: Row id of the version the run runs.
        version: The version the run runs.
        digest: That version's digest.
        shadow_version_id: A version to run in stage ``shadow`` on a copy of the task, or ``None``.
    """

    split_id: str
    kind: str
    variant: str
    version_id: str
    version: str
    digest: str
    shadow_version_id: str | None


def bucket_of(split_id: str, key: str) -> int:
    """The bucket (0..9,999) of ``key`` in ``split_id``: SHA-256, first 8 bytes, mod 10,000."""
    digest = hashlib.sha256(f"{split_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose_variant(variants: Sequence[Variant], bucket: int) -> Variant:
    """The first variant whose cumulative weight exceeds ``bucket``.

    Raises:
        ValueError: the weights do not sum to 10,000.
    """
    total = 0
    for variant in variants:
        total += variant.weight_bp
        if bucket < total:
            return variant
    raise ValueError(f"variant weights sum to {total} basis points, not {BUCKETS}")


def _variants(raw: list[dict[str, Any]]) -> list[Variant]:
    return [Variant(**item) for item in raw]


def assign_version(
    connection: Connection,
    *,
    tenant_id: str,
    agent_id: str,
    stage: str,
    run_id: str,
    requested_by: str,
    session_id: str | None = None,
) -> Assignment | None:
    """The variant a new run of ``agent_id`` in ``stage`` gets, or ``None`` without a split.

    Args:
        connection: A connection inside the transaction creating the run.
        tenant_id: The run's tenant.
        agent_id: Row id of the agent.
        stage: The stage the run is created for.
        run_id: The new run's id (the key when the split is keyed by run).
        requested_by: The requesting principal (the key when keyed by user).
        session_id: The run's session id (the key when keyed by session); ``None``: the
            run id is the key instead.
    """
    split = connection.execute(
        _SPLIT_OF, {"b_tenant": tenant_id, "b_agent": agent_id, "b_stage": stage}
    ).first()
    if split is None:
        return None
    key = run_id
    if split.key_by == "user":
        key = requested_by
    elif split.key_by == "session" and session_id is not None:
        key = session_id
    chosen = choose_variant(_variants(split.variants), bucket_of(split.id, key))
    digest = connection.execute(
        select(_VERSIONS.c.digest).where(_VERSIONS.c.id == chosen.version_id)
    ).scalar_one()
    return Assignment(
        split.id,
        split.kind,
        chosen.name,
        chosen.version_id,
        chosen.version,
        digest,
        split.shadow_version_id,
    )


def record_assignment(
    connection: Connection,
    assignment: Assignment,
    *,
    tenant_id: str,
    run_id: str,
    now: datetime,
    shadow_of: str | None = None,
) -> None:
    """Write which variant ``run_id`` got (the per-variant metrics read these rows)."""
    connection.execute(
        _ASSIGNMENTS.insert(),
        {
            "tenant_id": tenant_id,
            "run_id": run_id,
            "split_id": assignment.split_id,
            "variant": "shadow" if shadow_of else assignment.variant,
            "version": assignment.version,
            "shadow_of": shadow_of,
            "created_at": now,
        },
    )


def put_split(
    connection: Connection,
    *,
    tenant_id: str,
    split_id: str,
    agent_id: str,
    stage: str,
    kind: str,
    key_by: KeyBy,
    variants: Sequence[Variant],
    now: datetime,
    shadow_version_id: str | None = None,
) -> None:
    """Start splitting new runs of the agent in ``stage`` between ``variants``.

    Raises:
        InvalidRequest: the weights do not sum to 10,000 basis points.
        Conflict: another experiment or rollout already splits this agent's stage.
    """
    _check_weights(variants)
    existing = connection.execute(
        _SPLIT_OF, {"b_tenant": tenant_id, "b_agent": agent_id, "b_stage": stage}
    ).first()
    if existing is not None:
        raise Conflict(
            f"The {existing.kind} {existing.id} already splits the traffic of stage {stage!r} "
            f"of this agent; stop it first (`corral experiments stop {existing.id}` or "
            "`corral rollout abort AGENT`).",
            code="traffic_split_exists",
        )
    connection.execute(
        _SPLITS.insert(),
        {
            "id": split_id,
            "tenant_id": tenant_id,
            "agent_id": agent_id,
            "stage": stage,
            "kind": kind,
            "key_by": key_by,
            "variants": [v.as_json() for v in variants],
            "shadow_version_id": shadow_version_id,
            "updated_at": now,
        },
    )


def reweight_split(
    connection: Connection, split_id: str, variants: Sequence[Variant], *, now: datetime
) -> None:
    """Replace the variants (and weights) of split ``split_id``; its shadow copies stop."""
    _check_weights(variants)
    connection.execute(
        _SPLITS.update()
        .where(_SPLITS.c.id == split_id)
        .values(variants=[v.as_json() for v in variants], shadow_version_id=None, updated_at=now)
    )


def remove_split(connection: Connection, split_id: str) -> None:
    """End split ``split_id``: new runs get the stage's bound version again."""
    connection.execute(_SPLITS.delete().where(_SPLITS.c.id == split_id))


def _check_weights(variants: Sequence[Variant]) -> None:
    total = sum(v.weight_bp for v in variants)
    if total != BUCKETS or any(v.weight_bp < 0 for v in variants):
        raise InvalidRequest(
            f"Variant weights must be non-negative and sum to {BUCKETS} basis points "
            f"(100%); these sum to {total}."
        )
