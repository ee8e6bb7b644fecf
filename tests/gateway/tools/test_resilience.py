"""Retries with jitter, circuit breakers and rate limits around real HTTP calls."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from _http_upstream import Upstream, http_tool, serve_upstream
from opentelemetry import trace

from corral.contracts import AgentTools
from corral.errors import CircuitOpen, RateLimited, UpstreamFailed
from corral.gateway.tools import ResolvedTool, ToolCallContext, ToolGateway, ToolResult
from corral.gateway.tools._resilience import ToolRateLimiter, guard
from corral.resilience import CircuitBreakers
from corral.settings import ToolSettings

LOCAL = ["127.0.0.1"]
REDIS = ("127.0.0.1", 6379)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    yield from serve_upstream()


@pytest.fixture
async def make_gateway() -> AsyncIterator[Any]:
    made: list[ToolGateway] = []

    def make(**settings: Any) -> ToolGateway:
        defaults: dict[str, Any] = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05}
        gateway = ToolGateway(ToolSettings(**(defaults | settings)), trace.get_tracer("test"))
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


def context(tenant: str = "acme", principal: str | None = "agent:tester") -> ToolCallContext:
    return ToolCallContext(tenant, None, 0, 0, None, frozenset(), principal=principal)


async def call(
    gateway: ToolGateway, tool: ResolvedTool, ctx: ToolCallContext | None = None, **arguments: Any
) -> ToolResult:
    return await gateway.call(
        ctx or context(),
        {tool.name: tool},
        tool.name,
        arguments,
        agent_tools=AgentTools(allowed=["*"]),
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- retries ------------------------------------------------------------------------------------


async def test_a_503_is_retried_until_it_succeeds(make_gateway: Any, upstream: Upstream) -> None:
    key = unique("r")
    tool = http_tool("api.flaky", f"{upstream.url}/flaky/{key}?failures=2", allow_hosts=LOCAL)
    result = await call(make_gateway(retries=2), tool)
    assert result.status == "COMPLETED", result.output
    assert f'"ok":"{key}"' in result.output
    assert upstream.hits[f"/flaky/{key}"] == 3


async def test_retries_stop_at_the_attempt_bound(make_gateway: Any, upstream: Upstream) -> None:
    key = unique("r")
    tool = http_tool(
        "api.flaky", f"{upstream.url}/flaky/{key}?failures=5", allow_hosts=LOCAL, retries=1
    )
    result = await call(make_gateway(retries=4), tool)  # the tool's own setting wins
    assert (result.status, result.error_type) == ("FAILED", "upstream_error")
    assert "HTTP 503" in result.output and upstream.url in result.output
    assert upstream.hits[f"/flaky/{key}"] == 2


@pytest.mark.parametrize("status", [429, 502, 504])
async def test_other_retryable_statuses(make_gateway: Any, upstream: Upstream, status: int) -> None:
    key = unique("r")
    tool = http_tool(
        "api.flaky", f"{upstream.url}/flaky/{key}?failures=1&status={status}", allow_hosts=LOCAL
    )
    assert (await call(make_gateway(), tool)).status == "COMPLETED"
    assert upstream.hits[f"/flaky/{key}"] == 2


async def test_a_side_effecting_call_is_not_repeated_once_it_reached_the_api(
    make_gateway: Any, upstream: Upstream
) -> None:
    key = unique("w")
    write = http_tool(
        "api.write",
        f"{upstream.url}/flaky/{key}?failures=1",
        allow_hosts=LOCAL,
        side_effect="write",
    )
    result = await call(make_gateway(retries=3), write)
    assert result.error_type == "upstream_error"
    assert upstream.hits[f"/flaky/{key}"] == 1
    # ... unless the tool honours idempotency keys.
    key = unique("w")
    idempotent = http_tool(
        "api.write",
        f"{upstream.url}/flaky/{key}?failures=1",
        allow_hosts=LOCAL,
        side_effect="write",
        idempotent=True,
    )
    assert (await call(make_gateway(retries=3), idempotent)).status == "COMPLETED"
    assert upstream.hits[f"/flaky/{key}"] == 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_api_fails_naming_it_after_retries(make_gateway: Any) -> None:
    port = closed_port()
    tool = http_tool(
        "api.down", f"http://127.0.0.1:{port}/x", allow_hosts=LOCAL, side_effect="write"
    )
    result = await call(make_gateway(retries=2), tool)
    assert (result.status, result.error_type) == ("FAILED", "upstream_unreachable")
    assert f"cannot connect to http://127.0.0.1:{port}" in result.output


async def test_the_tool_timeout_bounds_every_attempt(make_gateway: Any, upstream: Upstream) -> None:
    tool = http_tool(
        "api.slow", f"{upstream.url}/slow?seconds=3", allow_hosts=LOCAL, timeout_seconds=0.3
    )
    result = await call(make_gateway(retries=5), tool)
    assert result.status == "FAILED"
    assert result.error_type in ("timeout", "upstream_timeout")


# --- circuit breaker ----------------------------------------------------------------------------


async def test_the_breaker_opens_fails_fast_naming_the_upstream_then_half_opens(
    make_gateway: Any, upstream: Upstream
) -> None:
    gateway = make_gateway(retries=0, breaker_failure_threshold=3, breaker_reset_seconds=1.0)
    tool = http_tool("api.switch", f"{upstream.url}/switch", allow_hosts=LOCAL)
    now = [1_000.0]  # an explicit clock: the test never waits on a loaded machine's timer
    gateway.resilience.breakers.clock = lambda: now[0]
    upstream.state["healthy"] = False
    try:
        before = upstream.hits["/switch"]
        for _ in range(3):
            assert (await call(gateway, tool)).error_type == "upstream_error"
        result = await call(gateway, tool)
        assert (result.status, result.error_type) == ("FAILED", "circuit_open")
        assert f"upstream '{upstream.url}' is unavailable" in result.output
        assert "3 consecutive failures" in result.output
        assert upstream.hits["/switch"] == before + 3  # the open breaker sent nothing
        assert gateway.resilience.breakers.state(upstream.url) == "open"
        now[0] += 1.05
        assert gateway.resilience.breakers.state(upstream.url) == "half_open"
        # A failing trial opens it again at once.
        assert (await call(gateway, tool)).error_type == "upstream_error"
        assert (await call(gateway, tool)).error_type == "circuit_open"
        now[0] += 1.05
        upstream.state["healthy"] = True
        assert (await call(gateway, tool)).status == "COMPLETED"
        assert gateway.resilience.breakers.state(upstream.url) == "closed"
    finally:
        upstream.state["healthy"] = True


async def test_client_errors_do_not_open_the_breaker(make_gateway: Any, upstream: Upstream) -> None:
    gateway = make_gateway(breaker_failure_threshold=2)
    tool = http_tool("api.missing", f"{upstream.url}/missing", allow_hosts=LOCAL)
    for _ in range(3):
        assert (await call(gateway, tool)).error_type == "http_error"
    assert gateway.resilience.breakers.state(upstream.url) == "closed"


async def test_breaker_guard_refuses_while_open_and_counts_429_as_an_answer() -> None:
    now = [100.0]
    breakers = CircuitBreakers(2, 10.0, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(UpstreamFailed):
            async with guard(breakers, "u"):
                raise UpstreamFailed("down", upstream="u", retryable=True, status_code=503)
    with pytest.raises(CircuitOpen) as caught:
        async with guard(breakers, "u"):
            pass
    assert caught.value.upstream == "u" and caught.value.retry_after_seconds == 10.0
    assert "opened after 2 consecutive failures" in caught.value.message
    now[0] += 10
    async with guard(breakers, "u"):  # the trial call succeeds
        pass
    assert breakers.state("u") == "closed"
    # A 429 means the upstream is alive: it does not count as a failure.
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            async with guard(breakers, "u"):
                raise UpstreamFailed("slow down", upstream="u", retryable=True, status_code=429)
    assert breakers.state("u") == "closed"


# --- rate limits --------------------------------------------------------------------------------


async def test_rate_limit_per_tool(make_gateway: Any, upstream: Upstream) -> None:
    gateway = make_gateway(rate_limit_per_tool="2/minute")
    tool = http_tool("api.switch", f"{upstream.url}/switch", allow_hosts=LOCAL)
    other = http_tool("api.other", f"{upstream.url}/switch", allow_hosts=LOCAL)
    assert [(await call(gateway, tool)).status for _ in range(2)] == ["COMPLETED"] * 2
    before = upstream.hits["/switch"]
    result = await call(gateway, tool)
    assert (result.status, result.error_type) == ("FAILED", "rate_limited")
    assert "tool 'api.switch' may make 2/minute tool calls; retry in" in result.output
    assert upstream.hits["/switch"] == before
    assert (await call(gateway, other)).status == "COMPLETED"
    # The tool's own rate overrides the default.
    strict = http_tool(
        "api.strict", f"{upstream.url}/switch", allow_hosts=LOCAL, rate_limit="1/hour"
    )
    assert (await call(gateway, strict)).status == "COMPLETED"
    assert "1/hour" in (await call(gateway, strict)).output


async def test_rate_limit_per_agent(make_gateway: Any, upstream: Upstream) -> None:
    gateway = make_gateway(rate_limit_per_agent="3/minute")
    tools = [http_tool(f"api.t{i}", f"{upstream.url}/switch", allow_hosts=LOCAL) for i in range(4)]
    results = [await call(gateway, tool) for tool in tools]
    assert [r.status for r in results] == ["COMPLETED"] * 3 + ["FAILED"]
    assert "caller 'agent:tester' may make 3/minute" in results[3].output
    other_agent = context(principal="agent:other")
    assert (await call(gateway, tools[3], other_agent)).status == "COMPLETED"


async def test_rate_limit_per_tenant(make_gateway: Any, upstream: Upstream) -> None:
    gateway = make_gateway(rate_limit_per_tenant="2/minute")
    tool = http_tool("api.switch", f"{upstream.url}/switch", allow_hosts=LOCAL)
    for principal in ("agent:a", "agent:b"):
        assert (await call(gateway, tool, context(principal=principal))).status == "COMPLETED"
    result = await call(gateway, tool, context(principal="agent:c"))
    assert (result.error_type, "tenant 'acme' may make 2/minute" in result.output) == (
        "rate_limited",
        True,
    )
    assert (await call(gateway, tool, context(tenant="globex"))).status == "COMPLETED"


def test_a_bad_default_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="not in limits notation"):
        ToolRateLimiter(ToolSettings(rate_limit_per_agent="many"))


@pytest.mark.parametrize(
    "name", ["rate_limit_per_tool", "rate_limit_per_agent", "rate_limit_per_tenant"]
)
def test_each_bad_default_rate_is_refused(name: str) -> None:
    settings = ToolSettings.model_validate({name: "many"})
    with pytest.raises(ValueError, match="'many' is not in limits notation"):
        ToolRateLimiter(settings)


def test_a_bad_storage_url_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot use rate-limit storage 'nope://localhost'"):
        ToolRateLimiter(ToolSettings(rate_limit_storage_url="nope://localhost"))


def redis_reachable() -> bool:
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError:
        return False
    return True


async def test_redis_storage_shares_counts_between_replicas() -> None:
    if not redis_reachable():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    settings = ToolSettings(
        rate_limit_storage_url="redis://127.0.0.1:6379", rate_limit_per_tool="3/minute"
    )
    replica_a, replica_b = ToolRateLimiter(settings), ToolRateLimiter(settings)
    ctx = context(tenant=unique("tenant"))
    try:
        await replica_a.acquire(ctx, "api.shared")
        await replica_a.acquire(ctx, "api.shared")
        await replica_b.acquire(ctx, "api.shared")
        with pytest.raises(RateLimited) as caught:
            await replica_b.acquire(ctx, "api.shared")
        assert caught.value.scope == "tool" and 0 < caught.value.retry_after_seconds <= 60
        await replica_a.acquire(context(tenant=unique("tenant")), "api.shared")
    finally:
        await replica_a.clear(ctx, "api.shared")
        replica_a.close()
        replica_b.close()


def test_mcp_breakers_are_per_tenant_and_http_breakers_per_host() -> None:
    from corral.contracts import ToolSpec
    from corral.gateway.tools._gateway import breaker_key

    mcp = ToolSpec.model_validate(
        {
            "description": "Search issues.",
            "type": "mcp",
            "mcp": {"server": "github", "tool": "search", "digest": "sha256:" + "0" * 64},
        }
    )
    # Server names are each tenant's own: one tenant's failing 'github' must not open another's.
    assert breaker_key(mcp, "tenant-a") != breaker_key(mcp, "tenant-b")
    assert breaker_key(mcp, "tenant-a") == "mcp:tenant-a/github"
    http = http_tool("api.issues", "https://api.example.com/issues").contract.spec
    assert breaker_key(http, "tenant-a") == breaker_key(http, "tenant-b")
    assert breaker_key(ToolSpec(description="Read a file."), "tenant-a") is None
