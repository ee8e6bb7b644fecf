"""SLOs: breaches and recoveries audited once per transition, alerted by signed webhooks."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Connection, select

from conftest import agent_document, register
from corral.audit import AuditEventRow
from corral.contracts import AgentSlo, parse_document
from corral.costs import ModelCall, record_model_call
from corral.errors import InvalidContract
from corral.gateway.models import ModelRequest, Usage
from corral.platform import Platform
from corral.registry import document_of
from corral.runtime import EndedRun, Worker, create_run
from corral.settings import AlertSettings, Settings, StoreSettings
from corral.slo import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SloEvaluator,
    WebhookSender,
    active_breaches,
    claim_evaluation,
    judge,
    p95,
)
from corral.store import SYSTEM, Base, utcnow
from corral.testing import ManualClock, ScriptedModel, ScriptStep

SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """A real local HTTP server recording alert POSTs.

    It answers 500 to the first ``fail`` ones, then ``status``.
    """

    def __init__(self, fail: int, *, status: int = 200) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = 500 if len(receiver.requests) <= receiver.fail else receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An alert receiver that refuses the first delivery with a 500."""
    found = Receiver(fail=1)
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def settings(tmp_path: Path, store_settings: StoreSettings, receiver: Receiver) -> Settings:
    """The conftest settings, alerting to the receiver and retrying without waiting."""
    return Settings(
        home=tmp_path / "home",
        store=store_settings,
        runtime={"poll_interval_seconds": 0.02, "lease_seconds": 30},
        workspaces={"roots": [tmp_path]},
        alerts={
            "webhooks": [{"url": receiver.url, "secret": SECRET}],
            "webhook_retry_initial_seconds": 0,
            "webhook_retry_max_seconds": 0,
        },
    )


def _fails_on_request(request: ModelRequest) -> ScriptStep:
    """Tasks saying ``fail`` get invalid output (the run's one iteration is spent), others an
    answer."""
    if any("fail" in (message.content or "") for message in request.messages):
        return "this is not a decision"
    return ScriptedModel.answer("done")


async def _runs(platform: Platform, task: str, count: int) -> None:
    async with platform.store.transaction("default") as session:
        for _ in range(count):
            await create_run(
                session,
                tenant_id="default",
                agent_name="flaky",
                task=task,
                requested_by="user:test",
            )
    await platform.worker.run_until_idle()


async def _audit(platform: Platform) -> list[AuditEventRow]:
    async with platform.store.read("default") as session:
        rows = await session.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.action.in_(["slo.breached", "slo.recovered"]))
            .order_by(AuditEventRow.id)
        )
        return list(rows)


async def test_an_error_rate_breach_is_audited_once_then_recovers_and_alerts(
    make_platform: Any, receiver: Receiver
) -> None:
    platform: Platform = await make_platform(scripted=ScriptedModel(_fails_on_request))
    await register(
        platform,
        agent_document(
            "flaky", limits={"max_iterations": 1}, slo={"error_rate_max": 0.3, "min_runs": 5}
        ),
    )
    await _runs(platform, "please fail", 6)
    now = utcnow() + timedelta(seconds=1)

    first = await platform.slo.evaluate(now=now)
    second = await platform.slo.evaluate(now=now + timedelta(minutes=1))
    await platform.slo.webhooks.drain()

    assert [(t.action, t.observation.objective, t.observation.observed) for t in first] == [
        ("slo.breached", "error_rate", "1")
    ]
    assert second == []
    events = await _audit(platform)
    assert [(e.action, e.subject, e.actor) for e in events] == [
        ("slo.breached", "agent:flaky", f"worker:{platform.worker.worker_id}")
    ]
    assert events[0].details == {
        "agent": "flaky",
        "objective": "error_rate",
        "limit": "0.3",
        "observed": "1",
        "window_minutes": 60,
        "runs": 6,
    }
    async with platform.store.read("default") as session:
        breaches = await active_breaches(session, tenant_id="default")
    assert [(b.agent, b.objective, b.observed) for b in breaches] == [("flaky", "error_rate", "1")]

    await _runs(platform, "please succeed", 20)
    recovered = await platform.slo.evaluate(now=utcnow() + timedelta(seconds=1))
    await platform.slo.webhooks.drain()

    assert [(t.action, t.observation.observed) for t in recovered] == [
        ("slo.recovered", "0.230769")
    ]
    assert [e.action for e in await _audit(platform)] == ["slo.breached", "slo.recovered"]
    async with platform.store.read("default") as session:
        assert await active_breaches(session, tenant_id="default") == []
    _check_deliveries(receiver)


def _check_deliveries(receiver: Receiver) -> None:
    """The breach was POSTed twice (a 500, then a retry), the recovery once; all signed."""
    bodies = [json.loads(body) for _, body in receiver.requests]
    assert [b["type"] for b in bodies] == ["slo.breached", "slo.breached", "slo.recovered"]
    assert bodies[0] == bodies[1]  # the retry carries the same alert (and delivery id)
    assert bodies[0]["agent"] == "flaky" and bodies[0]["tenant"] == "default"
    assert bodies[0]["objective"] == "error_rate" and bodies[0]["limit"] == "0.3"
    for headers, body in receiver.requests:
        timestamp = headers[TIMESTAMP_HEADER]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        assert headers[SIGNATURE_HEADER] == f"sha256={expected.hexdigest()}"
        assert abs(int(timestamp) - datetime.now(UTC).timestamp()) < 600


async def test_one_evaluator_of_many_judges_per_interval(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    interval = timedelta(seconds=60)

    async def claim(holder: str, at: datetime) -> bool:
        return await platform.store.run_sync(
            functools.partial(claim_evaluation, holder=holder, now=at, interval=interval),
            SYSTEM,
        )

    assert await claim("worker-a", start)
    assert not await claim("worker-b", start)
    assert not await claim("worker-b", start + timedelta(seconds=30))
    assert await claim("worker-b", start + timedelta(seconds=60))
    assert not await claim("worker-a", start + timedelta(seconds=61))


async def test_a_tick_that_lost_the_lease_does_not_judge(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    await register(platform, agent_document("spender", slo={"cost_usd_per_day_max": "0.10"}))
    await record_model_call(platform.store, _call("spender", "0.25"))
    clock = ManualClock(utcnow() + timedelta(seconds=1))
    first = SloEvaluator(platform.store, platform.settings.alerts, holder="a", clock=clock)
    other = SloEvaluator(platform.store, platform.settings.alerts, holder="b", clock=clock)
    try:
        assert [t.action for t in await first.tick()] == ["slo.breached"]
        assert await other.tick() == []  # the same interval: "a" judged it
    finally:
        for evaluator in (first, other):
            await evaluator.webhooks.drain()
            await evaluator.aclose()


def _call(agent: str, cost: str) -> ModelCall:
    return ModelCall(
        tenant_id="default",
        alias="scripted/test",
        deployment="scripted/test",
        provider="scripted",
        model="test",
        usage=Usage(input_tokens=100, output_tokens=10),
        cost_usd=Decimal(cost),
        agent=agent,
        created_at=utcnow(),
    )


async def test_breaches_are_listed_by_the_api_to_readers_of_the_tenant(api: Any) -> None:
    client = await api()
    platform: Platform = client._transport.app.state.platform
    await register(platform, agent_document("spender", slo={"cost_usd_per_day_max": "0.10"}))
    await record_model_call(platform.store, _call("spender", "0.25"))
    await platform.slo.evaluate(now=utcnow() + timedelta(seconds=1))
    await platform.slo.webhooks.drain()

    response = await client.get("/v1/slo/breaches")
    refused = await client.get("/v1/slo/breaches", headers={"X-Corral-Principal": "user:nobody"})
    async with platform.store.read("other") as session:
        elsewhere = await active_breaches(session, tenant_id="other")

    assert response.status_code == 200, response.text
    [breach] = response.json()
    assert {k: breach[k] for k in ("agent", "objective", "limit", "observed")} == {
        "agent": "spender",
        "objective": "cost_usd_per_day",
        "limit": "0.1",
        "observed": "0.25",
    }
    assert refused.status_code == 403
    assert elsewhere == []


def _ended(status: str, seconds: float) -> EndedRun:
    return EndedRun("a", status, seconds, utcnow())


def test_error_rate_and_latency_wait_for_min_runs_and_ignore_runs_people_ended() -> None:
    slo = AgentSlo(error_rate_max=0.5, p95_latency_seconds_max=10, min_runs=3)
    runs = [_ended("FAILED", 1), _ended("FAILED", 1), _ended("CANCELLED", 99)]
    few = judge(slo, runs, Decimal(0), now=utcnow())
    enough = judge(slo, [*runs, _ended("SUCCEEDED", 30)], Decimal(0), now=utcnow())

    assert [(o.objective, o.breached) for o in few] == [
        ("error_rate", None),
        ("p95_latency_seconds", None),
    ]
    assert [(o.objective, o.breached, o.observed, o.runs) for o in enough] == [
        ("error_rate", True, "0.666667", 3),
        ("p95_latency_seconds", True, "30", 3),
    ]


def test_p95_is_the_nearest_rank() -> None:
    assert p95([float(n) for n in range(1, 101)]) == 95.0
    assert p95([3.0]) == 3.0
    assert p95([float(n) for n in range(1, 21)]) == 19.0


def test_an_slo_block_needs_an_objective_and_fractions_stay_in_range() -> None:
    with pytest.raises(InvalidContract) as empty:
        parse_document(agent_document(slo={"window_minutes": 30}))
    with pytest.raises(InvalidContract) as too_large:
        parse_document(agent_document(slo={"error_rate_max": 1.5}))
    with pytest.raises(ValidationError, match="cost_usd_per_day_max"):
        AgentSlo(cost_usd_per_day_max=Decimal(-1))

    [issue] = empty.value.issues
    assert issue.path == "spec.slo"
    assert "set error_rate_max, p95_latency_seconds_max or cost_usd_per_day_max" in issue.message
    [issue] = too_large.value.issues
    assert issue.path == "spec.slo.error_rate_max"
    assert "less than or equal to 1" in issue.message


def test_agents_without_an_slo_keep_their_documents() -> None:
    assert "slo" not in document_of(parse_document(agent_document()))["spec"]
    with_slo = document_of(parse_document(agent_document(slo={"cost_usd_per_day_max": "5"})))
    assert with_slo["spec"]["slo"] == {
        "error_rate_max": None,
        "p95_latency_seconds_max": None,
        "cost_usd_per_day_max": "5",
        "window_minutes": 60,
        "min_runs": 10,
    }


async def test_the_worker_heartbeat_runs_its_jobs(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    worker = Worker(platform.store, platform.executor, signal_poll=timedelta(seconds=0.05))
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    worker.add_heartbeat_job(timedelta(seconds=3600), job)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(ran.wait(), timeout=30)
    finally:
        stop.set()
        await running
    assert ran.is_set()


async def test_the_slo_tables_are_what_the_migration_made(make_platform: Any) -> None:
    platform: Platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [diff for diff in found if "'slo_" in diff]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_a_breached_objective_removed_from_its_agent_recovers(make_platform: Any) -> None:
    platform: Platform = await make_platform()
    await register(platform, agent_document("spender", slo={"cost_usd_per_day_max": "0.10"}))
    await record_model_call(platform.store, _call("spender", "0.25"))
    now = utcnow() + timedelta(seconds=1)
    breached = await platform.slo.evaluate(now=now)
    await register(platform, agent_document("spender", slo={"error_rate_max": 0.5}))
    recovered = await platform.slo.evaluate(now=now + timedelta(minutes=1))
    await platform.slo.webhooks.drain()

    assert [(t.action, t.observation.objective) for t in breached + recovered] == [
        ("slo.breached", "cost_usd_per_day"),
        ("slo.recovered", "cost_usd_per_day"),
    ]
    async with platform.store.read("default") as session:
        assert await active_breaches(session, tenant_id="default") == []


def test_webhooks_come_from_the_environment_and_refuse_placeholder_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CORRAL_ALERTS__WEBHOOKS",
        json.dumps([{"url": "https://alerts.example/x", "secret": SECRET}]),
    )
    [webhook] = Settings().alerts.webhooks
    assert (webhook.url, webhook.secret.get_secret_value()) == ("https://alerts.example/x", SECRET)
    assert SECRET not in repr(Settings().alerts)
    monkeypatch.setenv(
        "CORRAL_ALERTS__WEBHOOKS", json.dumps([{"url": "https://a.example", "secret": "changeme"}])
    )
    with pytest.raises(ValidationError, match="openssl rand -hex 32"):
        Settings()


async def test_a_refused_delivery_is_not_retried() -> None:
    found = Receiver(fail=0, status=404)
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    sender = WebhookSender(
        AlertSettings(
            webhooks=[{"url": found.url, "secret": SECRET}], webhook_retry_initial_seconds=0
        )
    )
    try:
        accepted = await sender.deliver(sender.settings.webhooks[0], b'{"id": "x"}')
    finally:
        await sender.aclose()
        found.server.shutdown()
        found.server.server_close()
    assert accepted is False
    assert len(found.requests) == 1
