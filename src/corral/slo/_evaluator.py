"""The SLO evaluator: judges every tenant's SLOs once per interval, across N workers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select

from corral.settings import AlertSettings
from corral.slo._state import SloTransition, claim_evaluation, evaluate_tenant
from corral.slo._webhooks import WebhookSender
from corral.store import SYSTEM, Store, utcnow
from corral.tenancy import TenantRow

__all__ = ["SloEvaluator"]

log = logging.getLogger(__name__)


class SloEvaluator:
    """Judges SLOs, records transitions (audit events) and sends the alert webhooks.

    A worker's heartbeat calls :meth:`tick` every ``alerts.slo_interval_seconds``; the
    ``slo_evaluator`` row lets one worker of all judge per interval
    (:func:`claim_evaluation`), and a transition is recorded once even if two judged at once.

    Args:
        store: The store.
        settings: The evaluation interval and the webhooks.
        holder: Who judges (a worker id): the lease holder and the audit events' actor.
        clock: Current UTC time (tests pass a :class:`corral.testing.ManualClock`).
    """

    def __init__(
        self,
        store: Store,
        settings: AlertSettings,
        *,
        holder: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.holder = holder
        self.clock = clock
        self.interval = timedelta(seconds=settings.slo_interval_seconds)
        self.webhooks = WebhookSender(settings)

    async def tick(self) -> list[SloTransition]:
        """Judge now if no other worker did this interval; never raises (errors are logged).

        Returns:
            The transitions recorded (empty when another worker judges this interval).
        """
        now = self.clock()
        try:
            mine = await self.store.run_sync(
                functools.partial(
                    claim_evaluation, holder=self.holder, now=now, interval=self.interval
                ),
                SYSTEM,
            )
            return await self.evaluate(now=now) if mine else []
        except Exception:
            log.exception("judging SLOs failed; the next interval tries again")
            return []

    async def evaluate(self, *, now: datetime | None = None) -> list[SloTransition]:
        """Judge every tenant's SLOs now (no lease); alert on each transition in the background.

        A tenant whose evaluation fails is logged and skipped; the others are judged.

        Args:
            now: The time judged at (UTC); default: the clock's.

        Returns:
            The transitions recorded, tenant by tenant.
        """
        now = now or self.clock()
        async with self.store.read(SYSTEM) as session:
            tenants = list(await session.scalars(select(TenantRow.id).order_by(TenantRow.id)))
        transitions: list[SloTransition] = []
        for tenant_id in tenants:
            try:
                found = await evaluate_tenant(
                    self.store, tenant_id, now=now, actor=f"worker:{self.holder}"
                )
            except Exception:
                log.exception("judging the SLOs of tenant %r failed", tenant_id)
                continue
            for transition in found:
                log.warning(
                    "%s: agent %r, %s %s (limit %s)",
                    transition.action,
                    transition.agent,
                    transition.observation.objective,
                    transition.observation.observed or "-",
                    transition.observation.limit,
                )
                self.webhooks.send(transition.payload())
            transitions += found
        return transitions

    async def aclose(self) -> None:
        """Stop deliveries in flight and close the webhook client."""
        await self.webhooks.aclose()
