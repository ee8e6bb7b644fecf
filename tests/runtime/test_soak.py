"""The CI variant of the soak (``benchmarks/soak.py``): 30 s of mixed load on each store.

Runs, approvals (approved and rejected through ``/v1/approvals``), cancels and inbound ``/mcp``
``tools/call`` against a served Corral with its worker, in a child process. After the load
every run must end (none stuck), every run must end as its kind and its vote say, and no
request may fail. RSS growth is reported by the 10-minute soak only: over 30 s it is noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from corral.settings import StoreSettings

SOAK_SECONDS = 30.0


def _soak_module() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("corral_benchmark_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


soak = _soak_module()


@pytest.mark.timeout(240)  # 30 s of load, start-up and drain; room for a loaded machine
async def test_mixed_load_leaves_no_stuck_run_and_no_error(
    store_settings: StoreSettings, tmp_path: Path
) -> None:
    postgres = store_settings.url if store_settings.postgres_schema else None
    config = soak.Config(
        seconds=SOAK_SECONDS,
        clients=4,
        sample_seconds=2.0,
        drain_seconds=90.0,
        home=tmp_path / "home",
        postgres=postgres,
    )
    report = await soak.soak(config, schema=store_settings.postgres_schema)
    soak.print_report(report)

    assert report.stuck_runs == []
    assert report.error_count == 0, report.errors
    assert report.failures(check_rss=False) == []
    # Every kind of operation happened, and every kind of end.
    assert set(report.operations) == {"read", "write", "cancel", "mcp"}, report.operations
    assert report.votes.get("approve", 0) >= 1, report.votes
    assert {"SUCCEEDED", "CANCELLED"} <= set(report.runs_by_status), report.runs_by_status
    assert ("REJECTED" in report.runs_by_status) == bool(report.votes.get("reject")), report
    assert len(report.rss_samples) >= 5
