"""``PROMETHEUS_MULTIPROC_DIR``: API and workers in separate processes, one scrape sums them.

Each process is a real Python process (the client picks its multiprocess value store when it
is imported, so the test process itself cannot switch modes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SRC = str(Path(__file__).resolve().parents[2] / "src")

WRITER = """
from corral.observability import RUNS_IN_FLIGHT, count_run_finished, count_tool_call, observe_step
count_run_finished("SUCCEEDED", "final_answer", agent="mp-agent")
count_tool_call("fs.list_dir", "allow", "COMPLETED")
observe_step("mp-agent", 0.5, trace_id="0" * 31 + "1")
RUNS_IN_FLIGHT.inc()  # left at 1: the process exits, and its live gauge goes with it
"""

SCRAPER = """
import sys
from corral.observability import RUNS_IN_FLIGHT, exposition
RUNS_IN_FLIGHT.inc()  # this process is alive while it scrapes
sys.stdout.write(exposition().decode())
"""


def python(code: str, directory: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_processes_write_and_one_scrape_sums_them(tmp_path: Path) -> None:
    python(WRITER, tmp_path)
    python(WRITER, tmp_path)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(python(SCRAPER, tmp_path))
        for sample in family.samples
    }
    runs = ("corral_agent_runs_finished_total", (("agent", "mp-agent"), ("status", "SUCCEEDED")))
    assert samples[runs] == 2
    finished = ("corral_runs_finished_total", (("reason", "final_answer"), ("status", "SUCCEEDED")))
    assert samples[finished] == 2
    tool = (
        "corral_tool_calls_total",
        (("decision", "allow"), ("outcome", "completed"), ("tool", "fs.list_dir")),
    )
    assert samples[tool] == 2
    assert samples[("corral_run_step_duration_seconds_sum", (("agent", "mp-agent"),))] == 1.0
    # Summed over live processes only: the two writers exited.
    assert samples[("corral_runs_in_flight", ())] == 1
    # The per-process collectors would describe only the scraper: left out.
    assert not any(name.startswith("process_") for name, _labels in samples)


SAME_BYTES = """
from prometheus_client.exposition import choose_encoder
from corral.observability._exposition import negotiated
from corral.observability._metrics import _scrape_registry
registry = _scrape_registry()
for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
    encoder, content_type = choose_encoder(accept)
    assert negotiated(registry, accept) == (encoder(registry), content_type), accept
print("same")
"""


def test_the_summed_scrape_is_the_clients_byte_for_byte_in_both_formats(tmp_path: Path) -> None:
    python(WRITER, tmp_path)
    python(WRITER, tmp_path)
    assert python(SAME_BYTES, tmp_path) == "same\n"
