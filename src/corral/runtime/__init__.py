"""The runtime: runs, the standard loop, and the workers that lease and drive runs."""

from corral.runtime._loop import LeaseLost, Phase, RunExecutor
from corral.runtime._service import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    create_run,
    get_run,
    list_run_spans,
    list_runs,
    list_steps,
)
from corral.runtime._worker import Worker, default_worker_id

__all__ = [
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
]
