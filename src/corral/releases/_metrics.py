"""Per-variant metrics of a traffic split, read from the store.

A variant's runs are those assigned to it (``traffic_assignments``). Of its finished runs
(terminal status), an *error* is a run that ended ``FAILED``, ``TIMED_OUT`` or
``BUDGET_EXCEEDED`` (the agent's fault; a cancelled, rejected or killed run is not), and a
*success* is whatever the :class:`SuccessSource` says: by default a run that ended
``SUCCEEDED``. User feedback or graders plug in as another source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, cast

from sqlalchemy import Connection, Table, select

from corral.registry import TrafficAssignmentRow
from corral.releases._stats import median, percentile
from corral.runtime import TERMINAL_STATUSES, RunRow, RunStatus

__all__ = [
    "ERROR_STATUSES",
    "FinishedRun",
    "SuccessSource",
    "TerminalSuccess",
    "VariantMetrics",
    "shadow_agreement",
    "variant_metrics",
]

ERROR_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.BUDGET_EXCEEDED})
"""Terminal statuses that count as an error of the agent version."""

_RUNS = cast(Table, RunRow.__table__)
_ASSIGNMENTS = cast(Table, TrafficAssignmentRow.__table__)


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of a variant, as a success source sees it.

    Attributes:
        run_id: The run.
        status: Its terminal status.
        cost_usd: What it cost, in US dollars.
        latency_seconds: Seconds from its start to its end (``None`` if it never started).
    """

    run_id: str
    status: str
    cost_usd: Decimal
    latency_seconds: float | None


class SuccessSource(Protocol):
    """Decides which finished runs succeeded (graders, user feedback...)."""

    def successes(self, connection: Connection, runs: Sequence[FinishedRun]) -> set[str]:
        """The ids of the runs in ``runs`` that succeeded."""
        ...


class TerminalSuccess:
    """The default success source: a run succeeded when it ended ``SUCCEEDED``."""

    def successes(self, connection: Connection, runs: Sequence[FinishedRun]) -> set[str]:
        """The runs that ended ``SUCCEEDED``."""
        return {run.run_id for run in runs if run.status == RunStatus.SUCCEEDED}


@dataclass(frozen=True)
class VariantMetrics:
    """What one variant's runs did.

    Attributes:
        variant: The variant's name.
        runs: Runs assigned to it.
        finished: Of those, runs in a terminal status.
        errors: Finished runs that ended in an error status (:data:`ERROR_STATUSES`).
        successes: Finished runs the success source counts as successful.
        median_cost_usd: Median cost of the finished runs, in US dollars.
        p95_latency_seconds: 95th percentile (nearest rank) of their latency, in seconds.
    """

    variant: str
    runs: int
    finished: int
    errors: int
    successes: int
    median_cost_usd: Decimal | None
    p95_latency_seconds: float | None

    @property
    def error_rate(self) -> float | None:
        """Errors per finished run (0..1), or ``None`` before any run finished."""
        return self.errors / self.finished if self.finished else None

    @property
    def success_rate(self) -> float | None:
        """Successes per finished run (0..1), or ``None`` before any run finished."""
        return self.successes / self.finished if self.finished else None


def variant_metrics(
    connection: Connection,
    split_id: str,
    *,
    tenant_id: str,
    source: SuccessSource | None = None,
) -> dict[str, VariantMetrics]:
    """Metrics of every variant of split ``split_id`` that has runs, by variant name."""
    rows = connection.execute(
        select(
            _ASSIGNMENTS.c.variant,
            _RUNS.c.id,
            _RUNS.c.status,
            _RUNS.c.cost_usd,
            _RUNS.c.started_at,
            _RUNS.c.finished_at,
        )
        .join(_RUNS, _RUNS.c.id == _ASSIGNMENTS.c.run_id)
        .where(_ASSIGNMENTS.c.split_id == split_id, _ASSIGNMENTS.c.tenant_id == tenant_id)
    ).all()
    counts: dict[str, int] = defaultdict(int)
    finished: dict[str, list[FinishedRun]] = defaultdict(list)
    for variant, run_id, status, cost, started, ended in rows:
        counts[variant] += 1
        if status in TERMINAL_STATUSES:
            latency = (ended - started).total_seconds() if started and ended else None
            finished[variant].append(FinishedRun(run_id, status, Decimal(cost or 0), latency))
    judge = source or TerminalSuccess()
    return {
        variant: _summarise(variant, count, finished[variant], judge, connection)
        for variant, count in counts.items()
    }


def _summarise(
    variant: str,
    count: int,
    runs: list[FinishedRun],
    source: SuccessSource,
    connection: Connection,
) -> VariantMetrics:
    latencies = [run.latency_seconds for run in runs if run.latency_seconds is not None]
    return VariantMetrics(
        variant=variant,
        runs=count,
        finished=len(runs),
        errors=sum(1 for run in runs if run.status in ERROR_STATUSES),
        successes=len(source.successes(connection, runs)) if runs else 0,
        median_cost_usd=median([run.cost_usd for run in runs]),
        p95_latency_seconds=percentile(latencies, 0.95),
    )


def shadow_agreement(connection: Connection, split_id: str, *, tenant_id: str) -> tuple[int, int]:
    """How often finished shadow runs gave the same output as the live run they copied.

    Returns:
        ``(compared, same)``: pairs where both runs finished, and of those, pairs whose
        outputs are equal (exact text, after stripping surrounding whitespace).
    """
    live = _RUNS.alias("live")
    shadow = _RUNS.alias("shadow")
    rows = connection.execute(
        select(live.c.output, shadow.c.output)
        .select_from(_ASSIGNMENTS)
        .join(shadow, shadow.c.id == _ASSIGNMENTS.c.run_id)
        .join(live, live.c.id == _ASSIGNMENTS.c.shadow_of)
        .where(
            _ASSIGNMENTS.c.split_id == split_id,
            _ASSIGNMENTS.c.tenant_id == tenant_id,
            _ASSIGNMENTS.c.shadow_of.is_not(None),
            live.c.status.in_(TERMINAL_STATUSES),
            shadow.c.status.in_(TERMINAL_STATUSES),
        )
    ).all()
    same = sum(1 for a, b in rows if (a or "").strip() == (b or "").strip())
    return len(rows), same
