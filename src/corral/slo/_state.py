"""SLO state in the store: transitions (with their audit events), reads, the evaluator lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Connection, Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import append_event
from corral.contracts import AgentSlo
from corral.costs import costs_report, day_start
from corral.registry import latest_agent_versions, list_agents
from corral.runtime import ended_runs
from corral.slo._judge import OBJECTIVES, Observation, judge
from corral.slo._tables import SloEvaluatorRow, SloStateRow
from corral.store import Store, insert_on_conflict

__all__ = [
    "EVALUATOR_NAME",
    "SloBreach",
    "SloTransition",
    "active_breaches",
    "claim_evaluation",
    "evaluate_tenant",
]

EVALUATOR_NAME = "slo"
"""The one row of ``slo_evaluator``."""
_AGENTS_PAGE = 500


@dataclass(frozen=True)
class SloBreach:
    """An objective of an agent that is breached now (the portal's banner shows these).

    Attributes:
        agent: The agent's name.
        objective: ``error_rate``, ``p95_latency_seconds`` or ``cost_usd_per_day``.
        limit: Its limit, decimal text in the objective's unit.
        observed: The value that breached it, decimal text in the same unit.
        window_minutes: Minutes judged over (cost per day: minutes since 00:00 UTC).
        since: When the breach was recorded (UTC).
    """

    agent: str
    objective: str
    limit: str
    observed: str
    window_minutes: int
    since: datetime


@dataclass(frozen=True)
class SloTransition:
    """An objective that became breached, or recovered, at one evaluation.

    Attributes:
        tenant_id: The agent's tenant.
        agent: The agent's name.
        breached: ``True``: it became breached; ``False``: it recovered.
        observation: What was judged.
        at: When (UTC).
    """

    tenant_id: str
    agent: str
    breached: bool
    observation: Observation
    at: datetime

    @property
    def action(self) -> str:
        """``slo.breached`` or ``slo.recovered``: the audit action and the webhook type."""
        return "slo.breached" if self.breached else "slo.recovered"

    def payload(self) -> dict[str, Any]:
        """The webhook body (JSON-safe): type, tenant, agent, objective, limit, observed..."""
        return {
            "type": self.action,
            "tenant": self.tenant_id,
            "agent": self.agent,
            **self.observation.details(),
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }


async def active_breaches(session: AsyncSession, *, tenant_id: str) -> list[SloBreach]:
    """The tenant's objectives breached now, by agent and objective.

    Args:
        session: A session scoped to ``tenant_id``.
        tenant_id: The tenant.
    """
    rows = await session.scalars(
        select(SloStateRow)
        .where(SloStateRow.tenant_id == tenant_id, SloStateRow.breached.is_(True))
        .order_by(SloStateRow.agent_name, SloStateRow.objective)
    )
    return [
        SloBreach(
            row.agent_name,
            row.objective,
            row.limit_value,
            row.observed_value,
            row.window_minutes,
            row.changed_at,
        )
        for row in rows
    ]


def claim_evaluation(
    connection: Connection, *, holder: str, now: datetime, interval: timedelta
) -> bool:
    """Take this interval's evaluation for ``holder`` if nobody took it (system scope).

    The ``slo_evaluator`` row says when SLOs were last judged; a conditional update moves it to
    ``now`` only if that was at least 90% of ``interval`` ago (timers of different workers
    drift), so one worker of N judges per interval. On PostgreSQL a second updater waits for
    the first to commit and then finds the row fresh.

    Returns:
        Whether ``holder`` judges now.
    """
    table = cast(Table, SloEvaluatorRow.__table__)
    stale_before = now - interval * 0.9
    moved = connection.execute(
        table.update()
        .where(table.c.name == EVALUATOR_NAME, table.c.evaluated_at <= stale_before)
        .values(holder=holder, evaluated_at=now)
    ).rowcount
    if moved:
        return True
    inserted = connection.execute(
        insert_on_conflict(table, connection.dialect.name)
        .values(name=EVALUATOR_NAME, holder=holder, evaluated_at=now)
        .on_conflict_do_nothing(index_elements=[table.c.name])
    ).rowcount
    return bool(inserted)


async def evaluate_tenant(
    store: Store, tenant_id: str, *, now: datetime, actor: str
) -> list[SloTransition]:
    """Judge every SLO of the tenant's agents; record each transition with its audit event.

    Transitions and their ``slo.breached`` / ``slo.recovered`` audit events are written in one
    transaction; a state row changes only if it still holds the state read, so two evaluations
    at once record a transition once. An objective removed from its agent while breached
    recovers.

    Args:
        store: The store.
        tenant_id: The tenant.
        now: The time judged at (UTC).
        actor: Who judges (``worker:<id>``), the audit events' actor.

    Returns:
        The transitions recorded.
    """
    async with store.transaction(tenant_id) as session:
        slos = await _agent_slos(session, tenant_id)
        states = {
            (row.agent_name, row.objective): row
            for row in await session.scalars(
                select(SloStateRow).where(SloStateRow.tenant_id == tenant_id)
            )
        }
        if not slos and not any(row.breached for row in states.values()):
            return []
        cost_by_agent: dict[str, Decimal] = {}
        if any(slo.cost_usd_per_day_max is not None for slo in slos.values()):
            spend = await costs_report(store, by="agent", since=day_start(now), tenant_id=tenant_id)
            cost_by_agent = {group.key: group.cost_usd for group in spend}
        observations = await _observe(session, tenant_id, slos, cost_by_agent, now=now)
        observations += _removed(states, slos)
        transitions = []
        for agent, observation in observations:
            state = states.get((agent, observation.objective))
            if await _transition(session, tenant_id, agent, observation, state, now=now):
                transitions.append(
                    SloTransition(tenant_id, agent, bool(observation.breached), observation, now)
                )
        for transition in transitions:
            await append_event(
                session,
                tenant_id=tenant_id,
                actor=actor,
                action=transition.action,
                subject=f"agent:{transition.agent}",
                outcome="breached" if transition.breached else "recovered",
                details={"agent": transition.agent, **transition.observation.details()},
            )
    return transitions


async def _observe(
    session: AsyncSession,
    tenant_id: str,
    slos: dict[str, AgentSlo],
    cost_by_agent: dict[str, Decimal],
    *,
    now: datetime,
) -> list[tuple[str, Observation]]:
    """Judge each agent's objectives over the runs that ended in its window (one query)."""
    window = max((slo.window_minutes for slo in slos.values()), default=1)
    runs = await ended_runs(
        session, tenant_id=tenant_id, since=now - timedelta(minutes=window), until=now
    )
    observations: list[tuple[str, Observation]] = []
    for agent, slo in slos.items():
        since = now - timedelta(minutes=slo.window_minutes)
        mine = [r for r in runs if r.agent_name == agent and r.finished_at >= since]
        cost = cost_by_agent.get(agent, Decimal(0))
        observations += [(agent, o) for o in judge(slo, mine, cost, now=now)]
    return observations


async def _agent_slos(session: AsyncSession, tenant_id: str) -> dict[str, AgentSlo]:
    """The objectives of each agent whose latest version has an ``slo`` block."""
    found: dict[str, AgentSlo] = {}
    after: str | None = None
    while True:
        agents = await list_agents(session, tenant_id=tenant_id, limit=_AGENTS_PAGE, after=after)
        versions = await latest_agent_versions(session, agents, tenant_id=tenant_id)
        for agent in agents:
            version = versions.get(agent.id)
            block = None if version is None else version.document.get("spec", {}).get("slo")
            if block is None:
                continue
            try:
                found[agent.name] = AgentSlo.model_validate(block)
            except ValidationError:  # stored by an older contract: judge the others
                continue
        if len(agents) < _AGENTS_PAGE:
            return found
        after = agents[-1].name


def _removed(
    states: dict[tuple[str, str], SloStateRow], slos: dict[str, AgentSlo]
) -> list[tuple[str, Observation]]:
    """Recoveries of breached objectives that their agent no longer sets."""
    gone = []
    for (agent, objective), row in states.items():
        slo = slos.get(agent)
        field = _LIMIT_FIELD.get(objective)
        still_set = slo is not None and field is not None and getattr(slo, field) is not None
        if row.breached and not still_set and objective in OBJECTIVES:
            observation = Observation(
                objective,
                False,
                row.limit_value,
                "",
                row.window_minutes,
                None,
            )
            gone.append((agent, observation))
    return gone


_LIMIT_FIELD: dict[str, str] = {
    "error_rate": "error_rate_max",
    "p95_latency_seconds": "p95_latency_seconds_max",
    "cost_usd_per_day": "cost_usd_per_day_max",
}


async def _transition(
    session: AsyncSession,
    tenant_id: str,
    agent: str,
    observation: Observation,
    state: SloStateRow | None,
    *,
    now: datetime,
) -> bool:
    """Store a changed state; whether it changed (and so must be recorded and alerted)."""
    breached = observation.breached
    if breached is None or (state.breached if state is not None else False) == breached:
        return False
    values = {
        "breached": breached,
        "limit_value": observation.limit,
        "observed_value": observation.observed,
        "window_minutes": observation.window_minutes,
        "changed_at": now,
    }
    if state is None:
        session.add(
            SloStateRow(
                tenant_id=tenant_id, agent_name=agent, objective=observation.objective, **values
            )
        )
        await session.flush()
        return True
    result = await session.execute(
        update(SloStateRow)
        .where(
            SloStateRow.tenant_id == tenant_id,
            SloStateRow.agent_name == agent,
            SloStateRow.objective == observation.objective,
            SloStateRow.breached == state.breached,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
