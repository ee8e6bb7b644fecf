"""A worker process for the crash test (``test_crash.py``), which ``kill -9``s and restarts it.

Usage: ``python tests/runtime/_crash_worker.py WORKER_ID READY_FILE SEED PARENT_PID``.
Settings come from the environment (``CORRAL_STORE__URL``, ``CORRAL_STORE__POSTGRES_SCHEMA``,
``CORRAL_RUNTIME__LEASE_SECONDS``...). The process drives runs with :class:`Worker.run` until
SIGTERM, or until its parent (the test) is gone; it touches ``READY_FILE`` once it is polling.

The runs are of the agent :data:`AGENT`: a scripted model that makes :data:`EFFECT_STEPS` steps,
each one call of ``crash.effect`` (``side_effect: write``, ``idempotent: true``), then answers.
Runs whose task starts with :data:`GATED_PREFIX` call ``crash.gated`` (the same effect, held for
an approver by :data:`GATED_POLICY`) at step :data:`GATED_STEP`: they pause
``AWAITING_APPROVAL`` there and resume once the test approves through the API.
The tool honours its idempotency key: the effect is a row of ``crash_effects`` inserted with
``ON CONFLICT DO NOTHING``. Every execution attempt is appended to ``crash_attempts`` first and
every model call to ``crash_model_calls``, so the test can count what really happened.
With ``CORRAL_CRASH_HOLD_STEP=N`` set, the model call of step N waits until ``crash_gate`` holds a
row: a test can have every run in flight at a known point before it breaks something.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    text,
)

from corral.contracts import Tool
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools._fs import BuiltinTool
from corral.gateway.tools._gateway import current_tool_call
from corral.platform import Platform
from corral.settings import Settings
from corral.store import Store
from corral.testing import ScriptedModel

AGENT = "crash-agent"
TOOL = "crash.effect"
GATED_TOOL = "crash.gated"
"""The same effect as :data:`TOOL`, but every call waits for an approver."""
GATED_PREFIX = "gated"
"""Tasks of runs that pause for an approval once (at step :data:`GATED_STEP`)."""
GATED_STEP = 2
EFFECT_STEPS = 5
"""Tool steps per run; the run then answers (``EFFECT_STEPS + 1`` steps in all)."""

METADATA = MetaData()
EFFECTS = Table(
    "crash_effects",
    METADATA,
    Column("idempotency_key", String(120), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("n", Integer, nullable=False),
    Column("worker", String(200), nullable=False),
    Column("at", Float, nullable=False),
)
ATTEMPTS = Table(
    "crash_attempts",
    METADATA,
    Column("idempotency_key", String(120), nullable=False),
    Column("worker", String(200), nullable=False),
    Column("at", Float, nullable=False),
)
MODEL_CALLS = Table(
    "crash_model_calls",
    METADATA,
    Column("task", String(200), nullable=False),
    Column("step", Integer, nullable=False),
    Column("worker", String(200), nullable=False),
    Column("at", Float, nullable=False),
)

GATE = Table("crash_gate", METADATA, Column("opened_at", Float, nullable=False))
HOLD_STEP = os.environ.get("CORRAL_CRASH_HOLD_STEP")

_APPLY = text(
    "INSERT INTO crash_effects (idempotency_key, run_id, n, worker, at) "
    "VALUES (:key, :run_id, :n, :worker, :at) "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
)


def _contract(name: str, description: str) -> Tool:
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "version": "1.0.0"},
            "spec": {
                "description": description,
                "type": "builtin",
                "side_effect": "write",
                "idempotent": True,
                "input_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", "minimum": 0}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        }
    )


TOOL_CONTRACT = _contract(TOOL, "Apply effect n of the run (once per idempotency key).")
GATED_CONTRACT = _contract(GATED_TOOL, "Apply effect n of the run, once approved.")

GATED_POLICY: dict[str, Any] = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "crash-gated-needs-approval"},
    "spec": {
        "description": "Every crash.gated call waits for an approver.",
        "cedar": """
@id("crash-gated-needs-approval")
@decision("require_approval")
@approver_role("approver")
@reason("The crash test approves gated effects.")
forbid (principal, action == Action::"tool.call", resource == Tool::"crash.gated");
""",
    },
}

AGENT_DOCUMENT: dict[str, Any] = {
    "apiVersion": "corral.dev/v1",
    "kind": "Agent",
    "metadata": {"name": AGENT},
    "spec": {
        "description": "Applies effects, one per step.",
        "owner": "platform-team",
        "instructions": "Apply the effects in order.",
        "model": {"default": "scripted/test"},
        "tools": {"allowed": [TOOL, GATED_TOOL]},
        "limits": {"max_iterations": 20, "max_tool_calls": 20},
    },
}


def create_tables(connection: Connection) -> None:
    """Create the effect and counter tables (in the store's schema)."""
    METADATA.create_all(connection)


class CrashWorld:
    """The model and the tool of one worker process, recording into the store."""

    def __init__(self, worker_id: str, seed: int) -> None:
        self.worker_id = worker_id
        self.seed = seed
        self.store: Store | None = None

    def _rng(self, *parts: object) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    async def _write(self, fn: Any) -> Any:
        assert self.store is not None
        return await self.store.run_sync(fn, "default")

    async def decide(self, request: ModelRequest) -> ToolCall | FinalAnswer:
        task = request.messages[1].content
        n = sum(1 for m in request.messages if m.role == "tool")
        row = {"task": task, "step": n, "worker": self.worker_id, "at": time.time()}
        await self._write(lambda c: c.execute(insert(MODEL_CALLS), [row]))
        if HOLD_STEP is not None and n == int(HOLD_STEP):
            await self._gate_opened()
        await asyncio.sleep(self._rng(task, n, "model").uniform(0.01, 0.06))
        if n < EFFECT_STEPS:
            gated = task.startswith(GATED_PREFIX) and n == GATED_STEP
            return ToolCall(f"call_{n}", GATED_TOOL if gated else TOOL, {"n": n})
        return FinalAnswer(f"{task}: {n} effects applied")

    async def _gate_opened(self) -> None:
        """Wait for the test's row in ``crash_gate`` (another process writes it: poll)."""
        opened = False
        while not opened:
            opened = await self._write(lambda c: c.execute(select(GATE)).first() is not None)
            if not opened:
                await asyncio.sleep(0.2)

    async def effect(self, arguments: dict[str, Any], _workspace: Path | None, **_: Any) -> str:
        call = current_tool_call()
        key, now = call.idempotency_key, time.time()
        attempt = {"idempotency_key": key, "worker": self.worker_id, "at": now}
        await self._write(lambda c: c.execute(insert(ATTEMPTS), [attempt]))
        rng = self._rng(key, self.worker_id)
        await asyncio.sleep(rng.uniform(0, 0.03))  # a kill here leaves the effect undone
        values = {
            "key": key,
            "run_id": call.run_id,
            "n": arguments["n"],
            "worker": self.worker_id,
            "at": time.time(),
        }
        applied = await self._write(lambda c: c.execute(_APPLY, values).first() is not None)
        await asyncio.sleep(rng.uniform(0, 0.03))  # a kill here leaves it done, unrecorded
        return f"effect {arguments['n']} " + ("applied" if applied else "was already applied")


def builtins(world: CrashWorld) -> dict[str, BuiltinTool]:
    """The ``crash.effect`` and ``crash.gated`` builtins, bound to ``world``."""
    return {
        TOOL: BuiltinTool(TOOL_CONTRACT, world.effect),
        GATED_TOOL: BuiltinTool(GATED_CONTRACT, world.effect),
    }


async def main(worker_id: str, ready_file: Path, seed: int, parent: int) -> None:
    world = CrashWorld(worker_id, seed)
    platform = Platform(
        Settings(),
        providers={"scripted": ScriptedModel(world.decide)},
        builtins=builtins(world),
        migrate=False,
    )
    await platform.start()
    world.store = platform.store
    platform.worker.worker_id = worker_id
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    orphaned = asyncio.create_task(_stop_when_orphaned(stop, parent))
    await asyncio.to_thread(ready_file.touch)
    try:
        await platform.worker.run(stop)
    finally:
        orphaned.cancel()
        await platform.close()


async def _stop_when_orphaned(stop: asyncio.Event, parent: int) -> None:
    """Stop if the test process died without cleaning up (its children must not linger)."""
    while True:
        if os.getppid() != parent:
            stop.set()
            return
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    print(f"{sys.argv[1]} stopped", flush=True)
