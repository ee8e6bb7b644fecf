"""The same 10-step scripted agent on Corral and on its peers, side by side in one process.

Every system runs the same agent: a scripted model (no network) asks for one call of a no-op tool
for 9 steps, then gives a final answer; every step is made durable in SQLite (or PostgreSQL)
before the next one starts. Systems (see benchmarks/README.md, "peers.py"):

* ``corral-sqlite``: :class:`corral.platform.Platform` on SQLite WAL, settings as shipped except
  ``worker_concurrency=128`` and ``poll_interval_seconds=0.01`` (so 100 runs execute at once).
  The no-op tool is the builtin ``fs.list_dir`` on an empty temp workspace.
* ``corral-postgres``: the same on PostgreSQL, in a fresh schema dropped at the end (skipped,
  with a note, when PostgreSQL is unreachable).
* ``langgraph``: a ``StateGraph`` (``agent`` node, ``tools`` node, conditional edge) compiled with
  ``AsyncSqliteSaver`` on a temp file, ``durability="sync"``, one ``thread_id`` per run.
* ``agents-sdk``: the OpenAI Agents SDK, an ``Agent`` whose model is a scripted ``Model``
  implementation and one ``function_tool``; ``Runner.run(..., session=SQLiteSession(...))``.
* ``bare``: an asyncio loop with one stdlib ``sqlite3`` INSERT + COMMIT per step (WAL,
  ``synchronous=NORMAL``): the floor every ratio is computed against.

Measured per system, after a warm-up, ``--repeat`` times (the median is reported): runs/s and
CPU per step (``time.process_time()``) over ``--runs`` sequential runs, and the wall time of
``--concurrent`` concurrent runs whose model call waits 50 ms (ideal: 10 x 50 ms = 0.5 s).

Run: ``python benchmarks/peers.py [--runs 50] [--repeat 3] [--concurrent 100] [--skip langgraph]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.metadata
import json
import os
import platform as pyplatform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

# Nothing may leave the machine: the Agents SDK wants a key to exist (it is never used: the
# model is scripted and tracing is disabled below), LangSmith tracing stays off.
os.environ["OPENAI_API_KEY"] = "dummy"
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

from sqlalchemy import Connection, func, select

from corral.contracts import parse_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.registry import apply_documents
from corral.runtime import create_run
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import Settings
from corral.testing import ScriptedModel

STEPS = 10
"""Steps per run: ``STEPS - 1`` tool steps, then the final answer."""
TOOL_STEPS = STEPS - 1
MODEL_DELAY = 0.05
"""Seconds each model call waits in the concurrent test."""
BARE_RUNS_FACTOR = 20
"""The bare loop does ``--runs`` x this many sequential runs per measurement."""
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SYSTEMS = ("corral-sqlite", "corral-postgres", "langgraph", "agents-sdk", "bare")
LABELS = {
    "corral-sqlite": "Corral, SQLite WAL",
    "corral-postgres": "Corral, PostgreSQL",
    "langgraph": "LangGraph + AsyncSqliteSaver (durability=sync)",
    "agents-sdk": "OpenAI Agents SDK + SQLiteSession",
    "bare": "bare asyncio loop + sqlite3 INSERT+COMMIT per step",
}
AGENT = "bench-peers"
NOOP_TOOL = "fs.list_dir"


class BenchError(Exception):
    """A system did not do what the benchmark asked: the numbers would be meaningless."""


def check(condition: bool, system: str, message: str) -> None:
    if not condition:
        raise BenchError(f"{system}: {message}")


# --- measurement -------------------------------------------------------------------------------


@dataclass
class Sequential:
    """``runs`` runs one after another."""

    runs: int
    cpu_s: float
    wall_s: float

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall_s

    @property
    def cpu_us_per_step(self) -> float:
        return self.cpu_s / (self.runs * STEPS) * 1e6


@dataclass
class Concurrent:
    """``runs`` runs at once, each model call waiting ``MODEL_DELAY``."""

    runs: int
    wall_s: float
    cpu_s: float
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class SystemResult:
    system: str
    sequential: list[Sequential] = field(default_factory=list)
    concurrent: list[Concurrent] = field(default_factory=list)
    diagnosis: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "runs_per_s": statistics.median(s.runs_per_s for s in self.sequential),
            "cpu_us_per_step": statistics.median(s.cpu_us_per_step for s in self.sequential),
            "concurrent_wall_s": statistics.median(c.wall_s for c in self.concurrent),
            "concurrent_cpu_s": statistics.median(c.cpu_s for c in self.concurrent),
        }


class Counters:
    """Model calls and executions of the no-op tool, counted inside each system's own code."""

    def __init__(self) -> None:
        self.model_calls = 0
        self.tool_calls = 0

    def reset(self) -> None:
        self.model_calls = self.tool_calls = 0


class System:
    """One framework running the scripted agent. ``delay`` is the model's wait in seconds."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.counters = Counters()
        self.delay = 0.0

    async def start(self) -> None:
        """Set up stores and the agent."""

    async def close(self) -> None:
        """Release everything (and drop what the benchmark created)."""

    def versions(self) -> dict[str, str]:
        return {}

    async def sequential(self, runs: int) -> None:
        """Execute ``runs`` runs one after another; raise :class:`BenchError` if one is wrong."""
        raise NotImplementedError

    async def concurrent(self, runs: int) -> dict[str, float]:
        """Execute ``runs`` runs at once; returns extra figures (seconds) for the report."""
        raise NotImplementedError

    def verify_counts(self, runs: int) -> None:
        c = self.counters
        check(
            c.tool_calls == runs * TOOL_STEPS,
            self.name,
            f"{c.tool_calls} no-op tool executions for {runs} runs, expected {runs * TOOL_STEPS}",
        )
        check(
            c.model_calls == runs * STEPS,
            self.name,
            f"{c.model_calls} model calls for {runs} runs, expected {runs * STEPS}",
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- bare loop ---------------------------------------------------------------------------------


class Bare(System):
    name = "bare"

    async def start(self) -> None:
        self.conn = sqlite3.connect(self.tmp / "bare.db")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE steps (id INTEGER PRIMARY KEY, run TEXT, idx INTEGER, payload TEXT)"
        )
        self.conn.commit()

    async def close(self) -> None:
        self.conn.close()

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}

    async def _model(self, done: int) -> dict[str, Any]:
        self.counters.model_calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if done < TOOL_STEPS:
            return {"tool_calls": [{"id": f"call_{done}", "name": "noop", "arguments": {}}]}
        return {"final_answer": "done"}

    async def _tool(self) -> str:
        self.counters.tool_calls += 1
        return "ok"

    async def _run(self) -> int:
        run, done, steps = uuid.uuid4().hex, 0, 0
        while True:
            decision = await self._model(done)
            if "tool_calls" in decision:
                decision["output"] = await self._tool()
                done += 1
            steps += 1
            self.conn.execute(
                "INSERT INTO steps (run, idx, payload) VALUES (?, ?, ?)",
                (run, steps, json.dumps(decision)),
            )
            self.conn.commit()
            if "final_answer" in decision:
                return steps

    async def sequential(self, runs: int) -> None:
        for _ in range(runs):
            check(await self._run() == STEPS, self.name, "a run did not take 10 steps")

    async def concurrent(self, runs: int) -> dict[str, float]:
        steps = await asyncio.gather(*(self._run() for _ in range(runs)))
        check(all(s == STEPS for s in steps), self.name, "a run did not take 10 steps")
        return {}


# --- corral ------------------------------------------------------------------------------------


def corral_agent() -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Agent",
        "metadata": {"name": AGENT},
        "spec": {
            "description": "Peer-comparison benchmark agent.",
            "owner": "bench",
            "instructions": "List the workspace, then answer.",
            "model": {"default": "scripted/bench"},
            "tools": {"allowed": ["fs.*"]},
            "limits": {
                "max_iterations": STEPS + 1,
                "max_tool_calls": STEPS,
                "max_wall_clock_seconds": 3600,
            },
        },
    }


class Corral(System):
    """A Corral platform; ``settings`` decides the store."""

    def __init__(self, tmp: Path, name: str) -> None:
        super().__init__(tmp)
        self.name = name
        self.first_call: dict[str, float] = {}
        self.gaps: list[float] = []
        self._last_return: dict[str, float] = {}

    def settings(self) -> Settings:
        raise NotImplementedError

    async def start(self) -> None:
        self.workspace = self.tmp / f"{self.name}-workspace"
        self.workspace.mkdir()
        self.platform = Platform(
            self.settings(), providers={"scripted": ScriptedModel(self._decide)}
        )
        await self.platform.start()
        async with self.platform.store.transaction("default") as session:
            await apply_documents(
                session, [parse_document(corral_agent())], tenant_id="default", actor="user:bench"
            )

    async def close(self) -> None:
        await self.platform.close()

    def versions(self) -> dict[str, str]:
        return {"corral": _version("corral"), "sqlalchemy": _version("sqlalchemy")}

    async def _decide(self, request: ModelRequest) -> ToolCall | FinalAnswer:
        """``fs.list_dir('.')`` for the first 9 calls of a run, then the answer."""
        self.counters.model_calls += 1
        done = sum(1 for m in request.messages if m.role == "assistant")
        # Timestamps for the diagnosis: when each run got its first model call, and the time
        # between two model calls of a run (tool call + checkpoint + scheduling).
        key, now = request.messages[1].content, time.perf_counter()
        if done == 0:
            self.first_call[key] = now
        elif key in self._last_return:
            self.gaps.append(now - self._last_return[key])
        if self.delay:
            await asyncio.sleep(self.delay)
        self._last_return[key] = time.perf_counter()
        if done < TOOL_STEPS:
            return ToolCall(f"call_{done}", NOOP_TOOL, {"path": "."})
        return FinalAnswer("done")

    async def _create(self) -> str:
        async with self.platform.store.transaction("default") as session:
            run = await create_run(
                session,
                tenant_id="default",
                agent_name=AGENT,
                task=f"bench run {uuid.uuid4().hex}",
                requested_by="bench",
                workspace=str(self.workspace),
                workspaces=self.platform.workspaces,
            )
            return run.id

    async def _verify(self, run_ids: list[str]) -> None:
        async with self.platform.store.transaction("default") as session:
            rows = (
                await session.execute(
                    select(RunRow.status, RunRow.step_count, RunRow.tool_call_count).where(
                        RunRow.id.in_(run_ids)
                    )
                )
            ).all()
            executed = (
                await session.execute(
                    select(func.count())
                    .select_from(ToolCallRow)
                    .where(
                        ToolCallRow.run_id.in_(run_ids),
                        ToolCallRow.tool_name == NOOP_TOOL,
                        ToolCallRow.status == "COMPLETED",
                    )
                )
            ).scalar_one()
        bad = [tuple(r) for r in rows if tuple(r) != ("SUCCEEDED", STEPS, TOOL_STEPS)]
        check(
            len(rows) == len(run_ids) and not bad,
            self.name,
            f"{len(rows)}/{len(run_ids)} runs found; expected (SUCCEEDED, {STEPS} steps, "
            f"{TOOL_STEPS} tool calls), got e.g. {bad[:3]}",
        )
        # The tool is a builtin: its executions are counted from the audit trail it leaves.
        self.counters.tool_calls = executed

    def _reset_timestamps(self) -> None:
        self.first_call.clear()
        self._last_return.clear()
        self.gaps.clear()

    async def sequential(self, runs: int) -> None:
        self._reset_timestamps()
        run_ids = []
        for _ in range(runs):
            run_ids.append(await self._create())
            await self.platform.worker.run_until_idle()
        await self._verify(run_ids)

    async def concurrent(self, runs: int) -> dict[str, float]:
        self._reset_timestamps()
        t0 = time.perf_counter()
        run_ids = [await self._create() for _ in range(runs)]
        t1 = time.perf_counter()
        await self.platform.worker.run_until_idle()
        t2 = time.perf_counter()
        await self._verify(run_ids)
        firsts = sorted(self.first_call.values())
        return {
            "create_s": t1 - t0,
            "execute_s": t2 - t1,
            "last_run_first_model_call_s": firsts[-1] - t1 if firsts else 0.0,
            "gap_between_model_calls_median_s": statistics.median(self.gaps) if self.gaps else 0,
            "gap_between_model_calls_p90_s": (
                statistics.quantiles(self.gaps, n=10)[-1] if len(self.gaps) > 1 else 0.0
            ),
        }

    async def diagnose(self, runs: int) -> dict[str, Any]:
        """One instrumented concurrent batch: where do the 100 runs' seconds go?

        Wraps ``store.run_sync`` on this instance (benchmark only) to time each transaction:
        the wait before it starts (SQLite: the one writer thread's queue; PostgreSQL: the
        connection pool and BEGIN) and its execution.
        """
        store = self.platform.store
        original = store.run_sync
        waits: list[float] = []
        runs_s: list[float] = []
        kinds: dict[str, list[tuple[float, float]]] = {}

        async def timed_run_sync(fn: Callable[[Connection], Any], scope: Any) -> Any:
            submitted = time.perf_counter()
            # functools.partial(write_checkpoint, ...) -> "write_checkpoint";
            # "Worker.claim.<locals>.<lambda>" -> "Worker.claim"
            inner = fn.func if isinstance(fn, functools.partial) else fn
            kind = getattr(inner, "__qualname__", repr(inner)).split(".<locals>")[0]

            def body(connection: Connection) -> Any:
                started = time.perf_counter()
                try:
                    return fn(connection)
                finally:
                    ended = time.perf_counter()
                    waits.append(started - submitted)
                    runs_s.append(ended - started)
                    kinds.setdefault(kind, []).append((started - submitted, ended - started))

            return await original(body, scope)

        store.run_sync = timed_run_sync  # type: ignore[method-assign]
        try:
            self.counters.reset()
            gc.collect()
            cpu0, loop0 = time.process_time(), time.thread_time()
            detail = await self.concurrent(runs)
            cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        finally:
            store.run_sync = original  # type: ignore[method-assign]
        self.verify_counts(runs)
        wall = detail["create_s"] + detail["execute_s"]
        return {
            **detail,
            "process_cpu_s": cpu,
            "event_loop_thread_cpu_s": loop_cpu,
            "event_loop_busy_share": loop_cpu / detail["execute_s"],
            "run_sync_transactions": len(runs_s),
            "run_sync_wait_median_ms": statistics.median(waits) * 1e3,
            "run_sync_wait_p90_ms": statistics.quantiles(waits, n=10)[-1] * 1e3,
            "run_sync_exec_median_ms": statistics.median(runs_s) * 1e3,
            "run_sync_exec_total_s": sum(runs_s),
            "run_sync_by_kind": {
                kind: {
                    "count": len(pairs),
                    "wait_median_ms": statistics.median(w for w, _ in pairs) * 1e3,
                    "exec_median_ms": statistics.median(e for _, e in pairs) * 1e3,
                    "exec_total_s": sum(e for _, e in pairs),
                }
                for kind, pairs in sorted(kinds.items())
            },
            "wall_s": wall,
        }


class CorralSqlite(Corral):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "corral-sqlite")

    def settings(self) -> Settings:
        home = self.tmp / "corral-home"
        settings = Settings(
            home=home,
            runtime={"worker_concurrency": 128, "poll_interval_seconds": 0.01},
            workspaces={"roots": [self.tmp]},
        )
        if settings.store_url != f"sqlite+aiosqlite:///{home / 'corral.db'}":
            raise SystemExit(
                f"CORRAL_STORE__URL points the store elsewhere ({settings.store_url}); unset it: "
                "corral-sqlite measures the shipped SQLite store in a temp directory"
            )
        return settings

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "sqlite": sqlite3.sqlite_version}


class CorralPostgres(Corral):
    def __init__(self, tmp: Path, url: str) -> None:
        super().__init__(tmp, "corral-postgres")
        self.url = url
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        self.server_version = ""
        self._created = False

    async def _admin(self, sql: str) -> str:
        import asyncpg

        dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return str(await conn.fetchval(sql) or "")
        finally:
            await conn.close()

    async def reachable(self) -> str | None:
        """``None`` when PostgreSQL answers, else why not."""
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            return "asyncpg is not installed (pip install -e '.[postgres]')"
        try:
            self.server_version = await self._admin("SHOW server_version")
        except (OSError, TimeoutError) as exc:
            return f"PostgreSQL unreachable at {self.url}: {exc}"
        except Exception as exc:
            return f"PostgreSQL refused at {self.url}: {type(exc).__name__}: {exc}"
        return None

    def settings(self) -> Settings:
        return Settings(
            home=self.tmp / "corral-pg-home",
            store={"url": self.url, "postgres_schema": self.schema},
            runtime={"worker_concurrency": 128, "poll_interval_seconds": 0.01},
            workspaces={"roots": [self.tmp]},
        )

    async def start(self) -> None:
        await self._admin(f'CREATE SCHEMA "{self.schema}"')
        self._created = True
        await super().start()

    async def close(self) -> None:
        try:
            if hasattr(self, "platform"):
                await super().close()
        finally:
            if self._created:
                await self._admin(f'DROP SCHEMA "{self.schema}" CASCADE')

    def versions(self) -> dict[str, str]:
        return {
            **super().versions(),
            "asyncpg": _version("asyncpg"),
            "postgresql": self.server_version,
        }


# --- LangGraph ---------------------------------------------------------------------------------


class LangGraph(System):
    name = "langgraph"

    async def start(self) -> None:
        from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
        from langchain_core.tools import tool
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        from langgraph.graph import END, START, StateGraph
        from langgraph.graph.message import add_messages
        from langgraph.prebuilt import ToolNode

        counters = self

        # Functional form: this module's annotations are strings, and these names are local.
        state_schema = TypedDict(  # type: ignore[misc]  # noqa: UP013
            "State", {"messages": Annotated[list[AnyMessage], add_messages]}
        )

        @tool
        async def noop() -> str:
            """Do nothing."""
            counters.counters.tool_calls += 1
            return "ok"

        async def agent(state: dict[str, Any]) -> dict[str, Any]:
            counters.counters.model_calls += 1
            if counters.delay:
                await asyncio.sleep(counters.delay)
            done = sum(1 for m in state["messages"] if isinstance(m, ToolMessage))
            if done < TOOL_STEPS:
                call = {"name": "noop", "args": {}, "id": f"call_{done}", "type": "tool_call"}
                return {"messages": [AIMessage(content="", tool_calls=[call])]}
            return {"messages": [AIMessage(content="done")]}

        def route(state: dict[str, Any]) -> str:
            last = state["messages"][-1]
            return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

        builder = StateGraph(state_schema)
        builder.add_node("agent", agent)
        builder.add_node("tools", ToolNode([noop]))
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", route, ["tools", END])
        builder.add_edge("tools", "agent")
        self.stack = AsyncExitStack()
        saver = await self.stack.enter_async_context(
            AsyncSqliteSaver.from_conn_string(str(self.tmp / "langgraph.db"))
        )
        self.graph = builder.compile(checkpointer=saver)
        self._tool_message = ToolMessage
        self._ai_message = AIMessage

    async def close(self) -> None:
        if hasattr(self, "stack"):
            await self.stack.aclose()

    def versions(self) -> dict[str, str]:
        return {
            "langgraph": _version("langgraph"),
            "langgraph-checkpoint-sqlite": _version("langgraph-checkpoint-sqlite"),
            "langchain-core": _version("langchain-core"),
        }

    async def _run(self) -> None:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 50}
        result = await self.graph.ainvoke(
            {"messages": [("user", "List the workspace, then answer.")]},
            config,  # type: ignore[arg-type]
            durability="sync",
        )
        messages = result["messages"]
        tools = sum(1 for m in messages if isinstance(m, self._tool_message))
        steps = sum(1 for m in messages if isinstance(m, self._ai_message))
        check(
            (steps, tools, messages[-1].content) == (STEPS, TOOL_STEPS, "done"),
            self.name,
            f"a run ended with {steps} model steps, {tools} tool results, "
            f"last {messages[-1].content!r}",
        )

    async def sequential(self, runs: int) -> None:
        for _ in range(runs):
            await self._run()

    async def concurrent(self, runs: int) -> dict[str, float]:
        await asyncio.gather(*(self._run() for _ in range(runs)))
        return {}


# --- OpenAI Agents SDK -------------------------------------------------------------------------


class AgentsSDK(System):
    name = "agents-sdk"

    async def start(self) -> None:
        from agents import (
            Agent,
            Model,
            ModelResponse,
            Runner,
            SQLiteSession,
            Usage,
            function_tool,
            set_tracing_disabled,
        )
        from openai.types.responses import (
            ResponseFunctionToolCall,
            ResponseOutputMessage,
            ResponseOutputText,
        )

        set_tracing_disabled(True)
        owner = self

        class ScriptedSDKModel(Model):
            """A scripted ``Model``: 9 calls of ``noop``, then the answer. No network."""

            async def get_response(
                self,
                system_instructions: Any,
                input: Any,
                model_settings: Any,
                tools: Any,
                output_schema: Any,
                handoffs: Any,
                tracing: Any,
                *,
                previous_response_id: Any = None,
                conversation_id: Any = None,
                prompt: Any = None,
            ) -> ModelResponse:
                owner.counters.model_calls += 1
                if owner.delay:
                    await asyncio.sleep(owner.delay)
                items = input if isinstance(input, list) else []
                done = sum(1 for item in items if _item_type(item) == "function_call_output")
                output: list[Any]
                if done < TOOL_STEPS:
                    output = [
                        ResponseFunctionToolCall(
                            type="function_call",
                            id=f"fc_{done}",
                            call_id=f"call_{done}",
                            name="noop",
                            arguments="{}",
                            status="completed",
                        )
                    ]
                else:
                    output = [
                        ResponseOutputMessage(
                            type="message",
                            id="msg_final",
                            role="assistant",
                            status="completed",
                            content=[
                                ResponseOutputText(type="output_text", text="done", annotations=[])
                            ],
                        )
                    ]
                return ModelResponse(output=output, usage=Usage(), response_id=None)

            async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                raise NotImplementedError("the benchmark does not stream")
                yield  # pragma: no cover

        @function_tool
        async def noop() -> str:
            """Do nothing."""
            owner.counters.tool_calls += 1
            return "ok"

        self.agent = Agent(
            name="bench",
            instructions="List the workspace, then answer.",
            model=ScriptedSDKModel(),
            tools=[noop],
        )
        self.runner = Runner
        self.session_cls = SQLiteSession
        self.db = self.tmp / "agents-sdk.db"

    def versions(self) -> dict[str, str]:
        return {"openai-agents": _version("openai-agents"), "openai": _version("openai")}

    async def _run(self) -> None:
        session = self.session_cls(f"run-{uuid.uuid4().hex}", self.db)
        try:
            result = await self.runner.run(
                self.agent, "List the workspace, then answer.", session=session, max_turns=20
            )
        finally:
            session.close()
        outputs = sum(1 for item in result.new_items if item.type == "tool_call_output_item")
        check(
            (result.final_output, outputs, len(result.raw_responses))
            == ("done", TOOL_STEPS, STEPS),
            self.name,
            f"a run ended with {len(result.raw_responses)} model steps, {outputs} tool outputs, "
            f"final output {result.final_output!r}",
        )

    async def sequential(self, runs: int) -> None:
        for _ in range(runs):
            await self._run()

    async def concurrent(self, runs: int) -> dict[str, float]:
        await asyncio.gather(*(self._run() for _ in range(runs)))
        return {}


def _item_type(item: Any) -> Any:
    return item.get("type") if isinstance(item, dict) else getattr(item, "type", None)


# --- driver ------------------------------------------------------------------------------------


async def warm_up(system: System, args: argparse.Namespace) -> None:
    """Imports, caches, pools, prepared statements, the to_thread pool; checked like the rest."""
    system.delay = 0.0
    system.counters.reset()
    warm = max(3, args.runs // 10)
    await system.sequential(warm)
    system.verify_counts(warm)
    # A smaller concurrent batch: enough to grow pools and the to_thread pool, and it keeps
    # the whole invocation within ~5 minutes on a loaded 2-core machine.
    warm = min(args.concurrent, 25)
    system.delay = MODEL_DELAY
    system.counters.reset()
    await system.concurrent(warm)
    system.verify_counts(warm)


async def measure_once(system: System, result: SystemResult, args: argparse.Namespace) -> None:
    """One repeat: ``--runs`` sequential runs, then ``--concurrent`` concurrent runs."""
    # The bare loop's runs take ~0.3 ms: 20x more of them, so that its figure (every ratio's
    # denominator) is not a few milliseconds of CPU at the mercy of one context switch.
    runs = args.runs * BARE_RUNS_FACTOR if isinstance(system, Bare) else args.runs
    system.delay = 0.0
    system.counters.reset()
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await system.sequential(runs)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    system.verify_counts(runs)
    result.sequential.append(Sequential(runs, cpu, wall))

    system.delay = MODEL_DELAY
    system.counters.reset()
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    detail = await system.concurrent(args.concurrent)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    system.verify_counts(args.concurrent)
    result.concurrent.append(Concurrent(args.concurrent, wall, cpu, detail))


def build(name: str, tmp: Path, args: argparse.Namespace) -> System:
    if name == "corral-sqlite":
        return CorralSqlite(tmp)
    if name == "corral-postgres":
        return CorralPostgres(tmp, args.postgres_url)
    if name == "langgraph":
        return LangGraph(tmp)
    if name == "agents-sdk":
        return AgentsSDK(tmp)
    return Bare(tmp)


async def start_systems(
    args: argparse.Namespace, tmp: Path, stack: AsyncExitStack, notes: list[str]
) -> list[System]:
    systems: list[System] = []
    for name in SYSTEMS:
        if name in args.skip:
            notes.append(f"{name}: skipped (--skip).")
            continue
        system = build(name, tmp, args)
        if isinstance(system, CorralPostgres):
            reason = await system.reachable()
            if reason is not None:
                notes.append(f"{name}: skipped: {reason}.")
                print(f"note: {name} skipped: {reason}", file=sys.stderr)
                continue
        stack.push_async_callback(system.close)
        try:
            await system.start()
        except ImportError as exc:
            raise SystemExit(
                f"{name}: {exc}. Install the peers with `pip install -e '.[bench]'`, "
                f"or pass --skip {name}."
            ) from exc
        systems.append(system)
    return systems


async def main_async(args: argparse.Namespace, tmp: Path) -> tuple[list[SystemResult], list[str]]:
    notes: list[str] = []
    async with AsyncExitStack() as stack:
        systems = await start_systems(args, tmp, stack, notes)
        results = {s.name: SystemResult(s.name, versions=s.versions()) for s in systems}
        for system in systems:
            print(f"warming up {system.name}...", file=sys.stderr, flush=True)
            await warm_up(system, args)
        # Round robin: repeat r of every system runs before repeat r + 1 of any, so a burst of
        # load from other processes on a shared machine is spread over the systems.
        for repeat in range(args.repeat):
            for system in systems:
                print(
                    f"repeat {repeat + 1}/{args.repeat}: {system.name}...",
                    file=sys.stderr,
                    flush=True,
                )
                await measure_once(system, results[system.name], args)
        if not args.no_diagnose:
            for system in systems:
                if isinstance(system, Corral):
                    print(f"diagnosing {system.name}...", file=sys.stderr, flush=True)
                    system.delay = MODEL_DELAY
                    results[system.name].diagnosis = await system.diagnose(args.concurrent)
    return list(results.values()), notes


def render(results: list[SystemResult], notes: list[str], args: argparse.Namespace) -> str:
    bare = next((r for r in results if r.system == "bare"), None)
    floor = bare.summary()["cpu_us_per_step"] if bare else None
    lines = [
        f"Peers: the same scripted agent ({STEPS} steps: {TOOL_STEPS} calls of a no-op tool, "
        f"then a final answer), each step durable before the next. Sequential: {args.runs} runs "
        f"one after another ({args.runs * BARE_RUNS_FACTOR} for the bare loop). Concurrent: "
        f"{args.concurrent} runs at once, the model waiting "
        f"{MODEL_DELAY * 1e3:.0f} ms per call (ideal {STEPS * MODEL_DELAY:.2f} s). "
        f"Median of {args.repeat} repeats after a warm-up; CPU = time.process_time() (all "
        "threads).",
        "",
        "| system | runs/s | CPU us/step | "
        f"{args.concurrent} concurrent runs, {MODEL_DELAY * 1e3:.0f} ms model (s) "
        "| ratio CPU to bare loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.summary()
        ratio = f"{s['cpu_us_per_step'] / floor:.0f}x" if floor else "n/a"
        lines.append(
            f"| {LABELS[r.system]} | {s['runs_per_s']:.1f} | {s['cpu_us_per_step']:.0f} | "
            f"{s['concurrent_wall_s']:.2f} | {ratio} |"
        )
    lines.append("")
    for r in results:
        if not r.concurrent[0].detail:
            continue
        d = {
            k: statistics.median(c.detail[k] for c in r.concurrent) for k in r.concurrent[0].detail
        }
        lines.append(
            f"- {r.system}, concurrent (medians): create_run x{args.concurrent} "
            f"{d['create_s']:.2f} s (sequential, included in the table) + execution "
            f"{d['execute_s']:.2f} s; the last run's first model call came "
            f"{d['last_run_first_model_call_s']:.2f} s into execution; between two model calls "
            f"of a run (tool + checkpoint + waiting): median "
            f"{d['gap_between_model_calls_median_s'] * 1e3:.0f} ms, "
            f"p90 {d['gap_between_model_calls_p90_s'] * 1e3:.0f} ms."
        )
        if r.diagnosis:
            g = r.diagnosis
            lines.append(
                f"  Instrumented batch: event-loop thread CPU {g['event_loop_thread_cpu_s']:.2f} s "
                f"in {g['execute_s']:.2f} s of execution ({g['event_loop_busy_share']:.0%} busy), "
                f"process CPU {g['process_cpu_s']:.2f} s; {g['run_sync_transactions']} "
                f"store.run_sync transactions: wait before start median "
                f"{g['run_sync_wait_median_ms']:.1f} ms (p90 {g['run_sync_wait_p90_ms']:.1f} ms), "
                f"execution median {g['run_sync_exec_median_ms']:.2f} ms, "
                f"{g['run_sync_exec_total_s']:.2f} s in total. By kind: "
                + "; ".join(
                    f"{kind} x{k['count']}: wait {k['wait_median_ms']:.1f} ms, "
                    f"exec {k['exec_median_ms']:.2f} ms"
                    for kind, k in g["run_sync_by_kind"].items()
                )
                + "."
            )
    lines.append(
        f"- {args.concurrent} concurrent runs, process CPU / wall (medians; about 1.0 means the "
        "one event loop, or the GIL, is the limit): "
        + "; ".join(
            f"{r.system} {r.summary()['concurrent_cpu_s']:.2f} s / "
            f"{r.summary()['concurrent_wall_s']:.2f} s"
            for r in results
        )
        + "."
    )
    lines.extend(f"- {note}" for note in notes)
    versions: dict[str, str] = {}
    for r in results:
        versions.update(r.versions)
    lines.append("")
    lines.append(
        f"Python {pyplatform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f", {os.cpu_count()} CPUs, load average {args.load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (1 min; above ~0.5 other processes share the CPUs)."
    )
    return "\n".join(lines)


def to_json(results: list[SystemResult], notes: list[str], args: argparse.Namespace) -> str:
    bare = next((r for r in results if r.system == "bare"), None)
    floor = bare.summary()["cpu_us_per_step"] if bare else None
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "python": pyplatform.python_version(),
        "steps_per_run": STEPS,
        "model_delay_s": MODEL_DELAY,
        "notes": notes,
        "systems": [
            {
                "system": r.system,
                "label": LABELS[r.system],
                **r.summary(),
                "ratio_cpu_to_bare": r.summary()["cpu_us_per_step"] / floor if floor else None,
                "versions": r.versions,
                "sequential": [
                    {**vars(s), "runs_per_s": s.runs_per_s, "cpu_us_per_step": s.cpu_us_per_step}
                    for s in r.sequential
                ],
                "concurrent": [vars(c) for c in r.concurrent],
                "diagnosis": r.diagnosis,
            }
            for r in results
        ],
    }
    return json.dumps(payload, indent=2) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The same 10-step scripted agent on Corral and its peers, side by side."
    )
    parser.add_argument("--runs", type=int, default=50, help="sequential runs per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per system")
    parser.add_argument(
        "--concurrent", type=int, default=100, help="runs at once in the concurrent test"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=SYSTEMS,
        metavar="SYSTEM",
        help=f"leave a system out (repeatable): {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every sample here")
    parser.add_argument(
        "--postgres-url", default=DEFAULT_PG_URL, help="PostgreSQL for corral-postgres"
    )
    parser.add_argument(
        "--no-diagnose",
        action="store_true",
        help="skip the instrumented extra batch that explains Corral's concurrent wall time",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.repeat < 1 or args.concurrent < 1:
        parser.error("--runs, --repeat and --concurrent must be positive")
    if args.concurrent > 128:
        parser.error("--concurrent must be <= 128 (Corral's worker_concurrency here)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="corral-peers-") as tmp:
        try:
            results, notes = asyncio.run(main_async(args, Path(tmp)))
        except BenchError as exc:
            raise SystemExit(f"FAILED: {exc}") from exc
    print(render(results, notes, args))
    if args.json:
        args.json.write_text(to_json(results, notes, args))


if __name__ == "__main__":
    main()
