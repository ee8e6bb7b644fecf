"""Pins the public surface: every package's ``__all__`` names exist and nothing slips in."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "corral": ["__version__"],
    "corral.audit": [
        "GENESIS_HASH",
        "AuditRecord",
        "ChainVerification",
        "append_event",
        "append_events",
        "canonical_json",
        "event_hash",
        "verify_chain",
    ],
    "corral.registry": [
        "DEV_STAGE",
        "FIRST_VERSION",
        "ApplyResult",
        "Promotion",
        "StageBinding",
        "apply_documents",
        "bind_stage",
        "complete_promotion",
        "count_agents",
        "digest_of",
        "document_of",
        "get_agent",
        "get_agent_version",
        "list_agent_versions",
        "list_agents",
        "list_promotions",
        "list_tools",
        "next_patch",
        "promote",
        "reject_promotion",
        "rollback",
        "stage_bindings",
    ],
    "corral.runtime": [
        "PAUSED_STATUSES",
        "KillSwitchInfo",
        "cancel_run",
        "engage_kill_switch",
        "list_kill_switches",
        "release_kill_switch",
        "resolve_in_doubt",
        "resume_run",
        "RUN_STATUSES",
        "TERMINAL_STATUSES",
        "LeaseLost",
        "Phase",
        "RunExecutor",
        "Worker",
        "create_run",
        "default_worker_id",
        "get_run",
        "list_run_spans",
        "list_runs",
        "list_steps",
    ],
    "corral.observability": ["RUN_ID_ATTRIBUTE", "StoreSpanExporter", "Tracing", "new_trace_id"],
    "corral.api": ["STATUS_CODES", "create_app", "status_for"],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_exports_are_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC[module_name])
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is exported but missing"
