"""``GET /metrics``: what a governed run leaves there, what it never shows, who may read it.

The metrics are process-wide (one registry, shared by every platform the tests build), so the
tests compare two scrapes, before and after, and assert on the differences.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import agent_document
from corral.api import create_app
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES
from corral.settings import Settings
from corral.tenancy import ROLES, issue_key
from corral.testing import ScriptedModel

TENANT = "acme-metrics-7f3q"
"""A tenant id that appears nowhere unless something leaks it."""
TASK = "Summarise the secret plan zq-4471"
DENY_READ_FILE = """
@id("no-reading-files")
@reason("This team lists directories only.")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.read_file");
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, labels); parsing fails on a malformed exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


class Live:
    """The app with its worker, and keys of principals in :data:`TENANT`."""

    def __init__(self, platform: Platform, client: httpx.AsyncClient) -> None:
        self.platform = platform
        self.client = client
        self._keys: dict[tuple[str, str, tuple[str, ...]], str] = {}

    async def headers(self, tenant: str, principal: str, roles: list[str]) -> dict[str, str]:
        held = (tenant, principal, tuple(roles))
        if held not in self._keys:
            self._keys[held] = await issue_key(
                self.platform.store,
                server_secret=self.platform.identity.server_secret,
                tenant_id=tenant,
                principal=principal,
                roles=roles,
                name=f"{principal.replace(':', '-')}-{len(self._keys)}",
            )
        return {"Authorization": f"Bearer {self._keys[held]}"}

    async def as_(
        self,
        method: str,
        url: str,
        *,
        tenant: str = TENANT,
        principal: str = "user:ops",
        roles: list[str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = await self.headers(tenant, principal, list(ROLES) if roles is None else roles)
        return await self.client.request(method, url, headers=headers, **kwargs)

    async def scrape(self, **as_: Any) -> str:
        response = await self.as_("GET", "/metrics", roles=["operator"], **as_)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


@asynccontextmanager
async def live(settings: Settings, **providers: Any) -> AsyncIterator[Live]:
    platform = Platform(settings, providers=providers)
    app = create_app(platform)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral")
    try:
        yield Live(platform, client)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def run_to_end(world: Live, workspace: Path) -> Mapping[str, Any]:
    created = await world.as_(
        "POST",
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": TASK, "workspace": str(workspace)},
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    for _ in range(400):  # at most ~20 s
        run = (await world.as_("GET", f"/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL_STATUSES:
            return dict(run)
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def priced(settings: Settings) -> Settings:
    """The settings with a price for ``scripted/test`` (so the run has a cost)."""
    prices = {"scripted/test": {"input_usd_per_mtok": "1000", "output_usd_per_mtok": "2000"}}
    data = settings.model_dump()
    data["quotas"]["model_prices"] = prices
    return Settings.model_validate(data)


async def test_a_governed_run_shows_in_metrics_without_tenant_data(settings: Settings) -> None:
    settings = priced(settings)
    model = ScriptedModel(
        [
            ScriptedModel.call("fs.list_dir", path="."),
            ScriptedModel.call("fs.read_file", path="README.md"),
            ScriptedModel.answer("A demo package."),
        ]
    )
    policy = {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "list-only"},
        "spec": {"description": "No file reads.", "cedar": DENY_READ_FILE},
    }
    async with live(settings, scripted=model) as world:
        created = await world.as_("POST", "/v1/tenants", json={"id": TENANT}, tenant="default")
        assert created.status_code == 201, created.text
        workspace = world.platform.workspaces.ensure_builtin_root(TENANT) / "project"
        workspace.mkdir()
        (workspace / "README.md").write_text("# Demo\n")
        applied = await world.as_(
            "POST", "/v1/apply", json={"documents": [agent_document(), policy]}
        )
        assert applied.status_code == 200, applied.text

        before = parse(await world.scrape())
        run = await run_to_end(world, workspace)
        assert (run["status"], run["terminal_reason"]) == ("SUCCEEDED", "final_answer")
        text = await world.scrape()
        after = parse(text)

    assert (
        delta(
            before, after, "corral_runs_finished_total", status="SUCCEEDED", reason="final_answer"
        )
        == 1
    )
    model_labels = {"gen_ai_provider_name": "scripted", "gen_ai_request_model": "test"}
    tokens = "gen_ai_client_token_usage"
    for token_type in ("input", "output"):
        labels = {**model_labels, "gen_ai_token_type": token_type}
        assert delta(before, after, f"{tokens}_count", **labels) == 3  # three model calls
        assert delta(before, after, f"{tokens}_sum", **labels) > 0
    input_sum = delta(before, after, f"{tokens}_sum", **model_labels, gen_ai_token_type="input")
    output_sum = delta(before, after, f"{tokens}_sum", **model_labels, gen_ai_token_type="output")
    assert (input_sum, output_sum) == (run["input_tokens"], run["output_tokens"])
    duration = "gen_ai_client_operation_duration_seconds"
    assert delta(before, after, f"{duration}_count", **model_labels, outcome="ok") == 3
    assert delta(before, after, f"{duration}_bucket", **model_labels, outcome="ok", le="+Inf") == 3
    assert delta(before, after, f"{duration}_count", **model_labels, outcome="error") == 0
    calls = "corral_tool_calls_total"
    assert (
        delta(before, after, calls, tool="fs.list_dir", decision="allow", outcome="completed") == 1
    )
    assert delta(before, after, calls, tool="fs.read_file", decision="deny", outcome="denied") == 1
    assert (
        delta(before, after, calls, tool="fs.read_file", decision="allow", outcome="completed") == 0
    )
    # (input * 1000 + output * 2000) USD per million tokens.
    cost = delta(before, after, "corral_model_cost_usd_total", **model_labels)
    expected = (run["input_tokens"] * 1000 + run["output_tokens"] * 2000) / 1_000_000
    assert abs(cost - expected) < 1e-9
    assert float(run["cost_usd"]) == expected
    assert after[("corral_runs_in_flight", frozenset())] == 0

    # Nothing of the tenant, the run, the caller or the prompt is in the exposition.
    for leak in (TENANT, run["id"], run["trace_id"], "user:ops", TASK, "zq-4471", str(workspace)):
        assert leak not in text, leak


async def test_metrics_needs_a_key_with_metrics_read(settings: Settings) -> None:
    async with live(settings, scripted=ScriptedModel([])) as world:
        anonymous = await world.client.get("/metrics")
        assert anonymous.status_code == 401, anonymous.text
        viewer = await world.as_("GET", "/metrics", tenant="default", roles=["viewer"])
        assert viewer.status_code == 403, viewer.text
        assert "metrics.read" in viewer.json()["message"]
        for roles in (["operator"], ["platform-admin"]):
            allowed = await world.as_("GET", "/metrics", tenant="default", roles=roles)
            assert allowed.status_code == 200, (roles, allowed.text)
            assert "# TYPE corral_runs_in_flight gauge" in allowed.text


async def test_metrics_public_serves_without_credentials(settings: Settings) -> None:
    public = settings.model_copy(
        update={"observability": settings.observability.model_copy(update={"metrics_public": True})}
    )
    async with live(public, scripted=ScriptedModel([])) as world:
        response = await world.client.get("/metrics")
        assert response.status_code == 200, response.text
        families = {f.name for f in text_string_to_metric_families(response.text)}
        assert {
            "gen_ai_client_token_usage",
            "gen_ai_client_operation_duration_seconds",
            "corral_runs_finished",
            "corral_tool_calls",
            "corral_approval_wait_seconds",
            "corral_model_cost_usd",
            "corral_model_failovers",
            "corral_cache_hits",
            "corral_runs_in_flight",
        } <= families


async def test_a_run_shows_its_steps_agent_queue_and_exemplars(settings: Settings) -> None:
    """The series added for issue 13: step duration, runs by agent, queue depth, breakers,
    lease reclaims, and (OpenMetrics only) exemplars carrying the run's trace id."""
    model = ScriptedModel(
        [ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("Listed.")]
    )
    async with live(settings, scripted=model) as world:
        created = await world.as_("POST", "/v1/tenants", json={"id": TENANT}, tenant="default")
        assert created.status_code == 201, created.text
        workspace = world.platform.workspaces.ensure_builtin_root(TENANT) / "project"
        workspace.mkdir()
        applied = await world.as_("POST", "/v1/apply", json={"documents": [agent_document()]})
        assert applied.status_code == 200, applied.text

        before = parse(await world.scrape())
        run = await run_to_end(world, workspace)
        assert run["status"] == "SUCCEEDED"
        after = parse(await world.scrape())
        headers = await world.headers(TENANT, "user:ops", ["operator"])
        headers["Accept"] = "application/openmetrics-text; version=1.0.0"
        openmetrics = await world.client.get("/metrics", headers=headers)

    agent = {"agent": "repo-analyst"}
    assert (
        delta(before, after, "corral_agent_runs_finished_total", **agent, status="SUCCEEDED") == 1
    )
    steps = "corral_run_step_duration_seconds"
    assert delta(before, after, f"{steps}_count", **agent) == 2  # the tool step, the answer
    assert delta(before, after, f"{steps}_sum", **agent) > 0
    assert after[("corral_run_queue_depth", frozenset())] == 0
    assert delta(before, after, "corral_lease_reclaims_total") == 0
    families = {name for name, _labels in after}
    assert "corral_runs_in_flight" in families

    assert openmetrics.status_code == 200, openmetrics.text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars: dict[str, set[str]] = {}
    for family in openmetrics_families(openmetrics.text):
        for sample in family.samples:
            if sample.exemplar is not None and sample.labels.get("agent", "repo-analyst") == (
                "repo-analyst"
            ):
                exemplars.setdefault(sample.name, set()).add(sample.exemplar.labels["trace_id"])
    # The step's and the model call's histograms point at the run's trace.
    assert run["trace_id"] in exemplars[f"{steps}_bucket"]
    assert run["trace_id"] in exemplars["gen_ai_client_operation_duration_seconds_bucket"]


def openmetrics_families(text: str) -> list[Any]:
    """The families of an OpenMetrics exposition (the parser checks its syntax)."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_parse,
    )

    return list(openmetrics_parse(text))


async def test_queue_depth_counts_queued_runs_at_scrape_time(settings: Settings) -> None:
    platform = Platform(settings, providers={"scripted": ScriptedModel([])})
    app = create_app(platform, run_worker=False)  # nobody takes the runs
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral")
    world = Live(platform, client)
    try:
        applied = await world.as_(
            "POST", "/v1/apply", json={"documents": [agent_document()]}, tenant="default"
        )
        assert applied.status_code == 200, applied.text
        workspace = platform.workspaces.ensure_builtin_root("default")
        for _ in range(3):
            created = await world.as_(
                "POST",
                "/v1/agents/repo-analyst/runs",
                json={"stage": "dev", "task": "t", "workspace": str(workspace)},
                tenant="default",
            )
            assert created.status_code == 201, created.text
        samples = parse(await world.scrape(tenant="default"))
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    assert samples[("corral_run_queue_depth", frozenset())] == 3
