"""Costs: the ledger of model calls (tokens and US dollars), reports, and cost budgets.

Every model call, managed or inbound, leaves one :class:`ModelCall` row. Budgets (per run, per
agent per day, per tenant per day) are reserved before a call and settled after it
(:class:`Budgets`; the runtime does the same inside its checkpoints).
"""

from corral.costs._budgets import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    BudgetLimits,
    Reservation,
    check_run_budget,
    day_start,
    estimate_cost,
    estimate_input_tokens,
    release_reservations,
    reserve_budget,
)
from corral.costs._inbound import InboundCosts
from corral.costs._service import (
    COST_GROUPINGS,
    Budgets,
    CostGroup,
    CostGrouping,
    ModelCall,
    cost_report,
    costs_by_day_and_agent,
    costs_report,
    daily_model_usage,
    insert_model_calls,
    record_model_call,
)
from corral.costs._tables import BudgetReservationRow, ModelCallRow

__all__ = [
    "COST_GROUPINGS",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "BudgetLimits",
    "BudgetReservationRow",
    "Budgets",
    "CostGroup",
    "CostGrouping",
    "InboundCosts",
    "ModelCall",
    "ModelCallRow",
    "Reservation",
    "check_run_budget",
    "cost_report",
    "costs_by_day_and_agent",
    "costs_report",
    "daily_model_usage",
    "day_start",
    "estimate_cost",
    "estimate_input_tokens",
    "insert_model_calls",
    "record_model_call",
    "release_reservations",
    "reserve_budget",
]
