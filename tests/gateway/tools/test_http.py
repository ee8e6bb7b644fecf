"""http tools against a real local API: request mapping, responses, errors, the SSRF guard."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from _http_upstream import Upstream, http_tool, serve_upstream
from opentelemetry import trace

from corral.contracts import AgentTools, Tool, parse_document
from corral.errors import InvalidContract
from corral.gateway.tools import ResolvedTool, ToolCallContext, ToolGateway, ToolResult
from corral.gateway.tools._http import HostAllowlist, non_public_reason
from corral.settings import ToolSettings

LOCAL = ["127.0.0.1"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    yield from serve_upstream()


@pytest.fixture
async def gateway() -> AsyncIterator[ToolGateway]:
    gateway = ToolGateway(ToolSettings(retry_initial_seconds=0.01), trace.get_tracer("test"))
    yield gateway
    await gateway.aclose()


def context(run_id: str | None = None, principal: str = "agent:tester") -> ToolCallContext:
    return ToolCallContext("acme", run_id, 0, 0, None, frozenset(), principal=principal)


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


def body_of(result: ToolResult) -> Any:
    assert result.status == "COMPLETED", result.output
    return json.loads(result.output.split("\n\n", 1)[1])


# --- request mapping and responses --------------------------------------------------------------


async def test_path_query_header_and_body_arguments_reach_the_api(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    get = http_tool(
        "pets.get",
        f"{upstream.url}/v1/pets/{{pet_id}}",
        properties={"pet_id": {"type": "string"}, "trace": {"type": "string"}},
        parameters={"trace": {"in": "header", "name": "X-Trace"}},
        allow_hosts=LOCAL,
    )
    result = await call(gateway, get, pet_id="a/../b c", trace="t-1")
    assert result.output.startswith("HTTP 200 OK\ncontent-type: application/json")
    # The path argument cannot change the path's structure: "/" and ".." arrive encoded.
    assert body_of(result) == {
        "id": "a/../b c",
        "trace": "t-1",
        "key_ok": False,
        "echo_key": None,
    }
    assert upstream.seen[-1]["path"] == "/v1/pets/a/../b c"
    listing = http_tool(
        "pets.list",
        f"{upstream.url}/v1/pets",
        properties={"limit": {"type": "integer"}, "tag": {"type": "array"}, "x": {"type": "null"}},
        allow_hosts=LOCAL,
    )
    assert body_of(await call(gateway, listing, limit=2, tag=["a", "b"], x=None)) == {
        "pets": ["rex", "tom"],
        "limit": "2",
        "tags": ["a", "b"],
    }
    assert upstream.seen[-1]["query"] == "limit=2&tag=a&tag=b"


async def test_body_fields_and_the_idempotency_key_of_a_write(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    create = http_tool(
        "pets.create",
        f"{upstream.url}/v1/pets",
        method="POST",
        side_effect="write",
        properties={"name": {"type": "string"}, "tags": {"type": "array"}},
        allow_hosts=LOCAL,
    )
    result = await call(gateway, create, context(run_id="run_1"), name="rex", tags=["good"])
    assert result.output.startswith("HTTP 201 Created")
    assert body_of(result) == {"created": {"name": "rex", "tags": ["good"]}, "key": "run_1:0:0"}
    replace = http_tool(
        "pets.replace",
        f"{upstream.url}/v1/pets/{{id}}",
        method="PUT",
        side_effect="write",
        properties={"id": {"type": "integer"}, "names": {"type": "array"}},
        parameters={"names": {"in": "body_root"}},
        allow_hosts=LOCAL,
    )
    assert body_of(await call(gateway, replace, id=7, names=["a", "b"])) == {
        "id": "7",
        "body": ["a", "b"],
    }


async def test_4xx_and_5xx_are_tool_errors_naming_the_status(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    missing = http_tool("api.missing", f"{upstream.url}/missing", allow_hosts=LOCAL)
    result = await call(gateway, missing)
    assert (result.status, result.error_type) == ("FAILED", "http_error")
    assert "returned HTTP 404 Not Found" in result.output and "no such pet" in result.output
    broken = http_tool(
        "api.broken", f"{upstream.url}/flaky/e500?failures=99&status=500", allow_hosts=LOCAL
    )
    result = await call(gateway, broken)
    assert (result.status, result.error_type) == ("FAILED", "upstream_error")
    assert f"failed at {upstream.url}" in result.output  # names the upstream
    assert "HTTP 500" in result.output
    # 500 is not retryable: one request only.
    assert upstream.hits["/flaky/e500"] == 1


async def test_binary_bodies_are_described_not_shown(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    result = await call(gateway, http_tool("api.png", f"{upstream.url}/binary", allow_hosts=LOCAL))
    assert result.output.endswith("[72 bytes of image/png not shown: not text]")


async def test_oversized_output_is_truncated_and_marked(upstream: Upstream) -> None:
    gateway = ToolGateway(ToolSettings(max_response_bytes=50_000), trace.get_tracer("test"))
    try:
        await _oversized(gateway, upstream)
    finally:
        await gateway.aclose()


async def _oversized(gateway: ToolGateway, upstream: Upstream) -> None:
    small_cap = http_tool(
        "api.big", f"{upstream.url}/big?size=20000", allow_hosts=LOCAL, max_output_bytes=1000
    )
    result = await call(gateway, small_cap)
    assert result.truncated and result.output_bytes > 20_000
    assert result.output.startswith("HTTP 200 OK")
    assert result.output.endswith(
        f"[output truncated: first 1000 of {result.output_bytes} bytes shown]"
    )
    # A body beyond max_response_bytes is not even downloaded in full.
    huge = http_tool("api.huge", f"{upstream.url}/big?size=400000", allow_hosts=LOCAL)
    result = await call(gateway, huge)
    assert result.truncated
    assert result.output_bytes < 60_000
    assert "[output truncated: first 16384 of" in result.output


async def test_invalid_arguments_give_the_model_the_validation_errors(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    tool = http_tool(
        "pets.list2",
        f"{upstream.url}/v1/pets",
        properties={"limit": {"type": "integer", "maximum": 100}},
        required=["limit"],
        allow_hosts=LOCAL,
    )
    before = len(upstream.seen)
    result = await call(gateway, tool, limit="ten")
    assert (result.status, result.error_type) == ("FAILED", "invalid_arguments")
    assert "limit" in result.output and "integer" in result.output
    result = await call(gateway, tool)
    assert '(arguments): "limit" is a required property' in result.output
    assert len(upstream.seen) == before


async def test_cookies_from_one_call_never_reach_another(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    tool = http_tool("api.cookie", f"{upstream.url}/cookie", allow_hosts=LOCAL)
    await call(gateway, tool)
    assert body_of(await call(gateway, tool)) == {"cookie": None}


# --- the SSRF guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "not globally routable"),
        ("224.0.0.1", "multicast"),
    ],
)
async def test_the_guard_refuses_non_public_destinations_without_an_allowlist(
    gateway: ToolGateway, upstream: Upstream, host: str, reason: str
) -> None:
    before = len(upstream.seen)
    tool = http_tool("api.ssrf", f"http://{host}:{upstream.port}/headers", retries=3)
    result = await call(gateway, tool)
    assert (result.status, result.error_type) == ("FAILED", "destination_refused")
    assert f"a {reason} address" in result.output
    assert "http.allow_hosts" in result.output
    assert len(upstream.seen) == before  # nothing was sent


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost"])
async def test_the_allowlist_admits_the_host_or_network_it_names(
    gateway: ToolGateway, upstream: Upstream, entry: str
) -> None:
    host = "localhost" if entry == "localhost" else "127.0.0.1"
    tool = http_tool("api.ok", f"http://{host}:{upstream.port}/switch", allow_hosts=[entry])
    assert body_of(await call(gateway, tool)) == {"ok": True}


async def test_an_allowlisted_name_does_not_admit_other_loopback_names(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    tool = http_tool("api.ok2", f"http://localhost:{upstream.port}/switch", allow_hosts=["[::1]"])
    result = await call(gateway, tool)
    assert result.error_type == "destination_refused"
    assert "localhost (127.0.0.1)" in result.output


async def test_redirects_are_checked_by_the_guard(gateway: ToolGateway, upstream: Upstream) -> None:
    tool = http_tool(
        "api.redirect",
        f"{upstream.url}/redirect",
        properties={"to": {"type": "string"}},
        allow_hosts=LOCAL,
    )
    result = await call(gateway, tool, to="http://169.254.169.254/latest/meta-data/")
    assert (result.error_type, "link-local" in result.output) == ("destination_refused", True)
    result = await call(gateway, tool, to="file:///etc/passwd")
    assert result.error_type == "destination_refused"
    assert "only http and https" in result.output
    assert body_of(await call(gateway, tool, to="/switch")) == {"ok": True}


async def test_configured_headers_stay_with_their_origin_on_redirect(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    tool = http_tool(
        "api.redirect2",
        f"{upstream.url}/redirect",
        properties={"to": {"type": "string"}},
        headers={"X-Api-Key": "k-123"},
        allow_hosts=[*LOCAL, "localhost"],
    )
    same = body_of(await call(gateway, tool, to="/headers"))
    assert same["headers"]["x-api-key"] == "k-123"
    other = body_of(await call(gateway, tool, to=f"http://localhost:{upstream.port}/headers"))
    assert "x-api-key" not in other["headers"]


async def test_redirects_are_not_followed_when_disabled(
    gateway: ToolGateway, upstream: Upstream
) -> None:
    tool = http_tool(
        "api.redirect3",
        f"{upstream.url}/redirect",
        properties={"to": {"type": "string"}},
        allow_hosts=LOCAL,
        follow_redirects=False,
    )
    result = await call(gateway, tool, to="/switch")
    assert result.output.startswith("HTTP 302 Found")


def test_public_addresses_pass_and_embedded_ipv4_is_judged() -> None:
    import ipaddress

    assert non_public_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert non_public_reason(ipaddress.ip_address("2606:4700::1111")) is None
    assert non_public_reason(ipaddress.ip_address("64:ff9b::a00:1")) == "private"
    assert non_public_reason(ipaddress.ip_address("2002:7f00:1::")) is not None  # 6to4 127.0.0.1
    allow = HostAllowlist(["*.corp.example", "10.0.0.0/8"])
    assert allow.names_host("api.corp.example") and not allow.names_host("corp.example")
    assert allow.holds(ipaddress.ip_address("10.1.2.3"))
    assert not allow.holds(ipaddress.ip_address("::1"))


# --- the contract -------------------------------------------------------------------------------


def tool_document(**http: Any) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Tool",
        "metadata": {"name": "api.x"},
        "spec": {
            "description": "x",
            "type": "http",
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
            "http": {"url": "https://api.example.com/items/{id}"} | http,
        },
    }


@pytest.mark.parametrize(
    ("http", "field", "message"),
    [
        ({"url": "file:///etc/passwd"}, "spec.http.url", "absolute http:// or https:// URL"),
        ({"url": "https://{id}.example.com/"}, "spec.http.url", "not the host"),
        ({"url": "https://u:p@example.com/{id}"}, "spec.http.url", "credentials in the URL"),
        ({"allow_hosts": ["not a host"]}, "spec.http.allow_hosts", "neither a host name"),
        ({"verb": "GET"}, "spec.http.verb", "unknown field"),
        ({"parameters": {"id": {"in": "cookie"}}}, "spec.http.parameters.id.in", "'path'"),
        ({"url": "https://api.example.com/items"}, "spec.http", "the URL has no {id}"),
        ({"url": "https://api.example.com/{other}"}, "spec", "{other} matches no argument"),
        ({"parameters": {"id": {"in": "body"}}}, "spec.http", "GET requests carry no body"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "spec.http.headers", "line break"),
    ],
)
def test_a_bad_http_section_fails_with_its_field(
    http: dict[str, Any], field: str, message: str
) -> None:
    document = tool_document(**http)
    if http.get("url") == "https://api.example.com/items":
        document["spec"]["http"]["parameters"] = {"id": {"in": "path"}}
    with pytest.raises(InvalidContract) as caught:
        parse_document(document)
    issue = caught.value.issues[0]
    assert issue.path.startswith(field), caught.value.message
    assert message in issue.message, caught.value.message


def test_http_needs_type_http_and_rate_limits_parse() -> None:
    document = tool_document()
    document["spec"]["type"] = "builtin"
    with pytest.raises(InvalidContract, match="type 'http' needs an 'http' section"):
        parse_document(document)
    document = tool_document()
    document["spec"]["rate_limit"] = "lots"
    with pytest.raises(InvalidContract, match="not a rate in limits notation"):
        parse_document(document)
    document["spec"]["rate_limit"] = "5/second;100/hour"
    assert isinstance(parse_document(document), Tool)
