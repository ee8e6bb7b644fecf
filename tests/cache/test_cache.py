"""The exact-match model response cache and the tool-result cache (issue 12, item 5).

Every test runs on SQLite and PostgreSQL: the caches live in the store, so every worker and
replica shares them, and a tenant's entries are invisible to every other tenant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Table, func, select

from conftest import agent_document, register
from corral.audit._tables import AuditEventRow
from corral.cache import (
    ModelResponseCacheRow,
    StoreResponseCache,
    StoreToolResultCache,
    ToolResultCacheRow,
)
from corral.contracts import Tool, parse_document
from corral.errors import InvalidContract
from corral.gateway.models import (
    CachedResponse,
    FinalAnswer,
    Message,
    ModelRequest,
    ModelResponse,
    response_cache_digest,
)
from corral.gateway.tools import BuiltinTool, ToolResult
from corral.observability import REGISTRY
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.runtime import create_run, get_run, list_run_spans, list_steps
from corral.settings import Settings
from corral.store import Base
from corral.testing import ManualClock, ScriptedModel

pytestmark = pytest.mark.timeout(180)

_RESPONSES = cast(Table, ModelResponseCacheRow.__table__)
_RESULTS = cast(Table, ToolResultCacheRow.__table__)
_DECISIONS = cast(Table, PolicyDecisionRow.__table__)
_EVENTS = cast(Table, AuditEventRow.__table__)
REQUEST = ModelRequest(model="", messages=[Message("user", "What is 6 x 7?")])
TTL_SECONDS = 600


def counted(metric: str, kind: str) -> float:
    """The current value of ``corral_cache_{metric}_total{kind=...}`` (0 before the first)."""
    return REGISTRY.get_sample_value(f"corral_cache_{metric}_total", {"kind": kind}) or 0.0


async def run_agent(platform: Platform, workspace: Path | None, agent: str) -> Any:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name=agent,
            task="What is in this repository?",
            requested_by="user:test",
            workspace=None if workspace is None else str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    async with platform.store.read("default") as session:
        run = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
        spans = await list_run_spans(session, run.id, tenant_id="default")
    return run, steps, spans


async def tool_call_records(platform: Platform, run_id: str) -> tuple[list[str], list[str]]:
    """The run's ``tool.call`` decisions and the outcomes of its ``tool.call`` audit events."""

    def read(connection: Connection) -> tuple[list[str], list[str]]:
        decisions = connection.execute(
            select(_DECISIONS.c.decision).where(
                _DECISIONS.c.run_id == run_id, _DECISIONS.c.action == "tool.call"
            )
        )
        events = connection.execute(
            select(_EVENTS.c.outcome).where(
                _EVENTS.c.run_id == run_id, _EVENTS.c.action == "tool.call"
            )
        )
        return list(decisions.scalars()), list(events.scalars())

    return await platform.store.read_sync(read, "default")


def span_attributes(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s["attributes"] for s in spans if s["name"].startswith(prefix)]


async def count_rows(platform: Platform, table: Table, tenant_id: str = "default") -> int:
    def count(connection: Connection) -> int:
        query = select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
        return int(connection.execute(query).scalar_one())

    return await platform.store.read_sync(count, tenant_id)


def list_then_answer(request: ModelRequest) -> Any:
    """Lists the workspace root, then answers with what the tool returned."""
    tool_messages = [m for m in request.messages if m.role == "tool"]
    if not tool_messages:
        return ScriptedModel.call("fs.list_dir", path=".")
    return ScriptedModel.answer("seen: " + str(len(tool_messages[-1].content)))


# --- model response cache ----------------------------------------------------------------------


async def test_a_second_identical_deterministic_run_is_answered_from_the_cache(
    make_platform: Any, workspace: Path
) -> None:
    model = ScriptedModel(list_then_answer)
    platform = await make_platform(scripted=model)
    await register(
        platform,
        agent_document(model={"default": "scripted/test", "cache_ttl_seconds": TTL_SECONDS}),
    )
    hits, misses = counted("hits", "model"), counted("misses", "model")

    first, _, first_spans = await run_agent(platform, workspace, "repo-analyst")
    assert first.status == "SUCCEEDED"
    assert len(model.requests) == 2
    assert [a["corral.cache.hit"] for a in span_attributes(first_spans, "chat ")] == [False] * 2
    assert (counted("hits", "model") - hits, counted("misses", "model") - misses) == (0, 2)
    assert await count_rows(platform, _RESPONSES) == 2

    second, steps, spans = await run_agent(platform, workspace, "repo-analyst")
    assert second.status == "SUCCEEDED"
    assert second.output == first.output
    assert len(model.requests) == 2  # the model was not asked again
    assert len(steps) == 2  # the run still took its steps (and its tool call ran)
    chats = span_attributes(spans, "chat ")
    assert [a["corral.cache.hit"] for a in chats] == [True, True]
    assert all(a["gen_ai.usage.input_tokens"] == 0 for a in chats)
    assert (counted("hits", "model") - hits, counted("misses", "model") - misses) == (2, 2)
    assert second.input_tokens == second.output_tokens == 0  # a hit spends no tokens


async def test_an_agent_that_does_not_opt_in_is_never_cached(
    make_platform: Any, workspace: Path
) -> None:
    model = ScriptedModel(list_then_answer)
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    for _ in range(2):
        run, _, _ = await run_agent(platform, workspace, "repo-analyst")
        assert run.status == "SUCCEEDED"
    assert len(model.requests) == 4
    assert await count_rows(platform, _RESPONSES) == 0


async def test_a_sampled_request_without_a_seed_is_never_cached(make_platform: Any) -> None:
    model = ScriptedModel(lambda _request: ScriptedModel.answer("42"))
    platform = await make_platform(scripted=model)
    gateway = platform.models
    hits, misses = counted("hits", "model"), counted("misses", "model")
    sampled = ModelRequest(model="", messages=REQUEST.messages, temperature=0.7)
    for _ in range(2):
        _, response = await gateway.complete(
            ["scripted/test"], sampled, tenant_id="default", cache_ttl=_ttl()
        )
        assert not response.cache_hit
    assert len(model.requests) == 2
    assert await count_rows(platform, _RESPONSES) == 0
    assert (counted("hits", "model"), counted("misses", "model")) == (hits, misses)

    seeded = ModelRequest(model="", messages=REQUEST.messages, temperature=0.7, seed=7)
    for _ in range(2):
        _, response = await gateway.complete(
            ["scripted/test"], seeded, tenant_id="default", cache_ttl=_ttl()
        )
    assert response.cache_hit and response.cost_usd == 0
    assert response.decision == FinalAnswer("42")
    assert len(model.requests) == 3  # a fixed seed makes the request deterministic


async def test_every_field_that_changes_the_output_is_in_the_key() -> None:
    base = response_cache_digest("default", ["scripted/test"], REQUEST)
    variants = [
        ModelRequest(model="", messages=[Message("user", "What is 6 x 8?")]),
        ModelRequest(model="", messages=REQUEST.messages, temperature=0.0, seed=1),
        ModelRequest(model="", messages=REQUEST.messages, max_output_tokens=5),
        ModelRequest(model="", messages=REQUEST.messages, max_answer_chars=10),
        ModelRequest(model="", messages=REQUEST.messages, repeat_penalty=1.1),
        ModelRequest(model="", messages=REQUEST.messages, frequency_penalty=0.5),
        ModelRequest(model="", messages=REQUEST.messages, answer_sources=("a.py",)),
    ]
    digests = {response_cache_digest("default", ["scripted/test"], v) for v in variants}
    assert len(digests) == len(variants) and base not in digests
    assert response_cache_digest("other", ["scripted/test"], REQUEST) != base
    assert response_cache_digest("default", ["scripted/other"], REQUEST) != base
    # The per-attempt model field is not: the gateway replaces it for each deployment.
    assert (
        response_cache_digest("default", ["scripted/test"], ModelRequest("x", REQUEST.messages))
        == base
    )


def test_a_cited_answer_keeps_its_sources_through_the_cache() -> None:
    from corral.gateway.models import response_document, response_from_document

    response = ModelResponse(FinalAnswer("It parses URLs.", ("_urls.py",)), raw="{}")

    restored = response_from_document(response_document(CachedResponse("local/x", response)))

    assert restored.response.decision == FinalAnswer("It parses URLs.", ("_urls.py",))


async def test_an_entry_expires_after_its_ttl_and_is_pruned(make_platform: Any) -> None:
    model = ScriptedModel(lambda _request: ScriptedModel.answer("42"))
    platform = await make_platform(scripted=model)
    clock = ManualClock()
    platform.models.cache = StoreResponseCache(platform.store, clock=clock)

    async def ask(request: ModelRequest = REQUEST) -> ModelResponse:
        _, response = await platform.models.complete(
            ["scripted/test"], request, tenant_id="default", cache_ttl=_ttl()
        )
        return response

    assert not (await ask()).cache_hit
    clock.advance(seconds=TTL_SECONDS - 1)
    assert (await ask()).cache_hit
    clock.advance(seconds=1)  # expires_at is exclusive: now the entry is stale
    assert not (await ask()).cache_hit
    assert len(model.requests) == 2
    clock.advance(seconds=TTL_SECONDS)
    other = ModelRequest(model="", messages=[Message("user", "and 7 x 7?")])
    await ask(other)  # a write prunes the tenant's expired entries
    assert await count_rows(platform, _RESPONSES) == 1


async def test_a_tenant_never_reads_another_tenants_entries(make_platform: Any) -> None:
    model = ScriptedModel(lambda _request: ScriptedModel.answer("42"))
    platform = await make_platform(scripted=model)
    cache = StoreResponseCache(platform.store)
    digest = response_cache_digest("default", ["scripted/test"], REQUEST)
    entry = CachedResponse("scripted/test", ModelResponse(FinalAnswer("secret"), raw="secret"))
    await cache.put("default", digest, entry, ttl=_ttl())

    assert await cache.get("other", digest) is None  # the same digest, another tenant
    found = await cache.get("default", digest)
    assert found is not None and found.response.decision == FinalAnswer("secret")
    _, response = await platform.models.complete(
        ["scripted/test"], REQUEST, tenant_id="other", cache_ttl=_ttl()
    )
    assert not response.cache_hit and response.decision == FinalAnswer("42")
    assert await count_rows(platform, _RESPONSES, "other") == 1


async def test_a_cached_model_that_policy_now_refuses_is_not_served(make_platform: Any) -> None:
    model = ScriptedModel(lambda _request: ScriptedModel.answer("42"))
    platform = await make_platform(scripted=model, other=ScriptedModel([], name="other"))

    async def refuse_scripted(name: str, served: object = None) -> str | None:
        return "scripted is forbidden" if name.startswith("scripted/") else None

    await platform.models.complete(
        ["scripted/test"], REQUEST, tenant_id="default", cache_ttl=_ttl()
    )
    served, response = await platform.models.complete(
        ["scripted/test", "other/x"],
        REQUEST,
        tenant_id="default",
        cache_ttl=_ttl(),
        authorize=refuse_scripted,
    )
    assert (served, response.cache_hit) == ("other/x", False)


# --- tool-result cache -------------------------------------------------------------------------

PEEK_POLICY = """\
@id("no-peeking")
@reason("ws.peek is switched off.")
forbid (principal, action == Action::"tool.call", resource == Tool::"ws.peek");
"""


class Peek:
    """A read-only builtin that counts its executions; its result is cached for 600 s."""

    def __init__(self) -> None:
        self.executions = 0

    async def __call__(
        self, arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
    ) -> str:
        assert workspace is not None
        self.executions += 1
        return (workspace / arguments["path"]).read_text()

    def builtin(self) -> BuiltinTool:
        contract = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": "ws.peek", "version": "1.0.0"},
                "spec": {
                    "description": "Read one file of the workspace.",
                    "side_effect": "read",
                    "cache_ttl_seconds": TTL_SECONDS,
                    "input_schema": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}},
                        "required": ["path"],
                    },
                },
            }
        )
        return BuiltinTool(contract=contract, run=self)


def peek_then_answer(request: ModelRequest) -> Any:
    tool_messages = [m for m in request.messages if m.role == "tool"]
    if not tool_messages:
        return ScriptedModel.call("ws.peek", path="./README.md")
    return ScriptedModel.answer(tool_messages[-1].content)


async def test_a_read_only_tool_result_is_reused_after_the_policy_decision(
    settings: Settings, workspace: Path
) -> None:
    peek = Peek()
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(peek_then_answer)},
        builtins={"ws.peek": peek.builtin()},
    )
    await platform.start()
    try:
        await register(
            platform,
            agent_document(tools={"allowed": ["ws.*"]}),
            agent_document("other-analyst", tools={"allowed": ["ws.*"]}),
        )
        hits, misses = counted("hits", "tool"), counted("misses", "tool")
        first, _, first_spans = await run_agent(platform, workspace, "repo-analyst")
        assert first.status == "SUCCEEDED" and "# Demo" in (first.output or "")
        assert peek.executions == 1
        [tool_span] = span_attributes(first_spans, "execute_tool")
        assert tool_span["corral.cache.hit"] is False

        second, steps, spans = await run_agent(platform, workspace, "repo-analyst")
        assert second.status == "SUCCEEDED" and second.output == first.output
        assert peek.executions == 1  # answered from the cache
        [tool_span] = span_attributes(spans, "execute_tool")
        assert tool_span["corral.cache.hit"] is True
        [(_, [call])] = [(s, c) for s, c in steps if c]
        assert call.status == "COMPLETED"
        # Still decided and audited: only the execution was skipped.
        assert await tool_call_records(platform, second.id) == (["allow"], ["completed"])
        assert (counted("hits", "tool") - hits, counted("misses", "tool") - misses) == (1, 1)

        # Another agent never shares the first one's result.
        other, _, _ = await run_agent(platform, workspace, "other-analyst")
        assert other.status == "SUCCEEDED" and peek.executions == 2

        # Policy now forbids the tool: the cached result is not served; the call is denied.
        await register(
            platform,
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Policy",
                "metadata": {"name": "no-peeking"},
                "spec": {"description": "ws.peek is off.", "cedar": PEEK_POLICY},
            },
        )
        platform.governance.invalidate("default")
        denied, steps, spans = await run_agent(platform, workspace, "repo-analyst")
        [(_, [call])] = [(s, c) for s, c in steps if c]
        assert call.status == "DENIED"
        assert await tool_call_records(platform, denied.id) == (["deny"], ["denied"])
        assert "# Demo" not in (denied.output or "")
        assert peek.executions == 2
        [tool_span] = span_attributes(spans, "execute_tool")
        assert "corral.cache.hit" not in tool_span  # decided before any lookup
        assert await count_rows(platform, _RESULTS) == 2
    finally:
        await platform.close()


async def test_tool_results_expire_and_stay_with_their_tenant(make_platform: Any) -> None:
    platform = await make_platform()
    clock = ManualClock()
    cache = StoreToolResultCache(platform.store, clock=clock)
    result = ToolResult("COMPLETED", "hello", output_bytes=5, tool_version="1.0.0")
    await cache.put("default", "d" * 64, result, tool="ws.peek", ttl=_ttl())
    assert await cache.get("default", "d" * 64) == result
    assert await cache.get("other", "d" * 64) is None
    clock.advance(seconds=TTL_SECONDS)
    assert await cache.get("default", "d" * 64) is None


def test_a_write_tool_with_a_cache_ttl_is_refused_at_apply_time() -> None:
    document = {
        "apiVersion": "corral.dev/v1",
        "kind": "Tool",
        "metadata": {"name": "notes.append"},
        "spec": {"description": "Append a note.", "side_effect": "write", "cache_ttl_seconds": 60},
    }
    with pytest.raises(InvalidContract) as info:
        parse_document(document)
    assert "only for read-only tools" in str(info.value)
    document["spec"]["side_effect"] = "read"
    assert parse_document(document).spec.cache_ttl_seconds == 60  # type: ignore[union-attr]


async def test_the_cache_tables_are_what_the_migration_made(make_platform: Any) -> None:
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [d for d in found if "_cache'" in d or "_cache_" in d]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


def _ttl() -> Any:
    from datetime import timedelta

    return timedelta(seconds=TTL_SECONDS)
