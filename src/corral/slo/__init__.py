"""SLOs and alerts: each agent's objectives judged from the store, breaches audited and alerted.

An Agent's ``slo`` block (:class:`corral.contracts.AgentSlo`) sets objectives: error rate and
p95 latency over the runs that ended in a window, cost per UTC day. A worker's heartbeat runs
:meth:`SloEvaluator.tick`; each breach and recovery records an ``slo.breached`` /
``slo.recovered`` audit event once and POSTs a signed JSON body to the configured webhooks
(:mod:`corral.slo._webhooks` documents the signature). :func:`active_breaches` lists what is
breached now (``GET /v1/slo/breaches``, the portal's banner).
"""

from corral.slo._evaluator import SloEvaluator
from corral.slo._judge import (
    ERROR_STATUSES,
    OBJECTIVES,
    UNJUDGED_STATUSES,
    Observation,
    judge,
    p95,
)
from corral.slo._state import (
    SloBreach,
    SloTransition,
    active_breaches,
    claim_evaluation,
    evaluate_tenant,
)
from corral.slo._tables import SloEvaluatorRow, SloStateRow
from corral.slo._webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    sign_webhook,
)

__all__ = [
    "DELIVERY_HEADER",
    "ERROR_STATUSES",
    "OBJECTIVES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "UNJUDGED_STATUSES",
    "Observation",
    "SloBreach",
    "SloEvaluator",
    "SloEvaluatorRow",
    "SloStateRow",
    "SloTransition",
    "WebhookSender",
    "active_breaches",
    "claim_evaluation",
    "evaluate_tenant",
    "judge",
    "p95",
    "sign_webhook",
]
