"""The runtime: runs, the standard loop, and the workers that lease and drive runs."""

from corral.runtime._control import (
    PAUSED_STATUSES,
    KillSwitchInfo,
    cancel_run,
    engage_kill_switch,
    list_kill_switches,
    release_kill_switch,
    resolve_in_doubt,
    resume_run,
)
from corral.runtime._effects import APPROVAL_EFFECTS, TENANT_KILL_SWITCH, RunApprovalEffects
from corral.runtime._loop import LeaseLost, Phase, RunExecutor
from corral.runtime._overview import RunOverview, run_overview
from corral.runtime._reads import (
    MAX_EVENTS_READ,
    EndedRun,
    RunChange,
    RunEvent,
    answer_sources,
    changed_runs,
    count_queued_runs,
    ended_runs,
    read_events,
)
from corral.runtime._service import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    create_run,
    get_run,
    list_run_spans,
    list_runs,
    list_steps,
    session_id_problem,
    start_run,
)
from corral.runtime._status import RunStatus, StepKind, ToolCallStatus
from corral.runtime._tables import RunRow
from corral.runtime._worker import Worker, default_worker_id
from corral.runtime._workspaces import WORKSPACES_DIR, Workspaces

__all__ = [
    "APPROVAL_EFFECTS",
    "MAX_EVENTS_READ",
    "PAUSED_STATUSES",
    "RUN_STATUSES",
    "TENANT_KILL_SWITCH",
    "TERMINAL_STATUSES",
    "WORKSPACES_DIR",
    "EndedRun",
    "KillSwitchInfo",
    "LeaseLost",
    "Phase",
    "RunApprovalEffects",
    "RunChange",
    "RunEvent",
    "RunExecutor",
    "RunOverview",
    "RunRow",
    "RunStatus",
    "StepKind",
    "ToolCallStatus",
    "Worker",
    "Workspaces",
    "answer_sources",
    "cancel_run",
    "changed_runs",
    "count_queued_runs",
    "create_run",
    "default_worker_id",
    "ended_runs",
    "engage_kill_switch",
    "get_run",
    "list_kill_switches",
    "list_run_spans",
    "list_runs",
    "list_steps",
    "read_events",
    "release_kill_switch",
    "resolve_in_doubt",
    "resume_run",
    "run_overview",
    "session_id_problem",
    "start_run",
]
