"""Policy-as-code on Cedar: ``allow``, ``deny`` or ``require_approval`` for every governed action.

Policies are Cedar text validated against :func:`cedar_schema` when a :class:`PolicyEngine` is
built; :meth:`PolicyEngine.evaluate` decides one :class:`PolicyRequest` with the combination
rules documented on :class:`PolicyEngine` (default deny, evaluation error = deny,
approval-forbids turn into ``require_approval`` only when approving would allow).
:data:`DEFAULT_POLICIES` is the shipped policy set; :func:`load_cases`, :func:`run_cases` and
:func:`explain` back ``corral policy test`` and ``corral policy explain``.
"""

from corral.policy._cases import (
    CaseExpectation,
    CaseResult,
    PolicyCase,
    explain,
    load_cases,
    run_cases,
)
from corral.policy._defaults import DEFAULT_POLICIES, DEFAULT_POLICY_TEXT
from corral.policy._engine import PolicyEngine
from corral.policy._reads import applied_policies, list_run_decisions
from corral.policy._schema import (
    ACTIONS,
    PRINCIPAL_TYPES,
    RESOURCE_TYPES,
    PolicyAction,
    cedar_schema,
)
from corral.policy._service import (
    EXPLAIN_DEFAULT_ATTRIBUTES,
    TOOL_RISK,
    Authorization,
    DecisionRow,
    Governance,
    agent_entity,
    arguments_digest,
    contract_approvals,
    decision_row,
    insert_decisions,
    policy_sources,
    principal_ref,
    redact,
    tenant_policy_documents,
    tool_entity,
)
from corral.policy._tables import PolicyDecisionRow, PolicyRow, PolicyVersionRow
from corral.policy._types import (
    CompiledPolicy,
    DecisionKind,
    Entity,
    EntityRef,
    EntitySet,
    PolicyContext,
    PolicyDecision,
    PolicyKind,
    PolicyRequest,
    PolicySource,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICIES",
    "DEFAULT_POLICY_TEXT",
    "EXPLAIN_DEFAULT_ATTRIBUTES",
    "PRINCIPAL_TYPES",
    "RESOURCE_TYPES",
    "TOOL_RISK",
    "Authorization",
    "CaseExpectation",
    "CaseResult",
    "CompiledPolicy",
    "DecisionKind",
    "DecisionRow",
    "Entity",
    "EntityRef",
    "EntitySet",
    "Governance",
    "PolicyAction",
    "PolicyCase",
    "PolicyContext",
    "PolicyDecision",
    "PolicyDecisionRow",
    "PolicyEngine",
    "PolicyKind",
    "PolicyRequest",
    "PolicyRow",
    "PolicySource",
    "PolicyVersionRow",
    "agent_entity",
    "applied_policies",
    "arguments_digest",
    "cedar_schema",
    "contract_approvals",
    "decision_row",
    "explain",
    "insert_decisions",
    "list_run_decisions",
    "load_cases",
    "policy_sources",
    "principal_ref",
    "redact",
    "run_cases",
    "tenant_policy_documents",
    "tool_entity",
]
