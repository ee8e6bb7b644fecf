"""Model aliases over deployments against real HTTP upstreams (fake OpenAI-wire servers).

Fallback on a 500, retries honouring ``Retry-After``, the breaker opening and half-opening on
an explicit clock, region preference and failover, data residency, policy refusals.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from corral.contracts import ModelSpec
from corral.errors import ModelAPIError, NotFound
from corral.gateway.models import (
    FAILOVERS,
    Deployment,
    FinalAnswer,
    Message,
    ModelCatalog,
    ModelGateway,
    ModelRequest,
    Served,
    retry_after_seconds,
)
from corral.gateway.models._routing import route
from corral.resilience import CircuitBreakers
from corral.testing import FakeOpenAIUpstream, ScriptedModel, UpstreamReply

REQUEST = ModelRequest(model="", messages=[Message("user", "hi")])


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the waits between retries instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeOpenAIUpstream]]:
    made: dict[str, FakeOpenAIUpstream] = {}
    yield made
    for upstream in made.values():
        upstream.stop()


def _upstream(made: dict[str, FakeOpenAIUpstream], name: str, *replies: UpstreamReply) -> str:
    made[name] = FakeOpenAIUpstream(list(replies), answer=f"from {name}", name=name).start()
    return made[name].base_url


def _spec(*deployments: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate({"deployments": list(deployments)})


def _gateway(
    aliases: dict[str, ModelSpec],
    *,
    region: str | None = None,
    clock: Clock | None = None,
    sleep: Sleeps | None = None,
    threshold: int = 5,
    **providers: ScriptedModel,
) -> ModelGateway:
    return ModelGateway(
        providers,
        NoOpTracer(),
        catalog=ModelCatalog(defaults=aliases),
        region=region,
        breakers=CircuitBreakers(threshold, 30.0, clock=clock or Clock()),
        rng=random.Random(7),
        sleep=sleep or Sleeps(),
    )


def _openai(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "m", "base_url": base_url, "max_retries": 0, **extra}


async def test_a_500_from_the_first_deployment_falls_back_to_the_next(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    first = _upstream(upstreams, "first", UpstreamReply.error(500))
    second = _upstream(upstreams, "second")
    # The first has (nearly) all the weight, so it is tried first.
    gateway = _gateway({"smart": _spec(_openai(first, weight=1000), _openai(second))})
    before = FAILOVERS.labels("failed")._value.get()
    model, response = await gateway.complete(["smart"], REQUEST)
    assert (model, response.decision) == ("openai/m", FinalAnswer("from second"))
    assert response.served is not None and response.served.deployment == "smart#1"
    [attempt] = response.attempts
    assert (attempt.served.deployment, attempt.outcome) == ("smart#0", "failed")
    assert "HTTP 500" in attempt.error
    assert (upstreams["first"].request_count, upstreams["second"].request_count) == (1, 1)
    assert FAILOVERS.labels("failed")._value.get() == before + 1


async def test_retryable_errors_are_retried_with_jitter_and_retry_after_is_honoured(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    url = _upstream(
        upstreams,
        "flaky",
        UpstreamReply.error(429, retry_after="7"),
        UpstreamReply.error(503),
    )
    sleeps = Sleeps()
    gateway = _gateway({"fast": _spec(_openai(url, max_retries=2))}, sleep=sleeps)
    _, response = await gateway.complete(["fast"], REQUEST)
    assert response.decision == FinalAnswer("from flaky")
    assert upstreams["flaky"].request_count == 3
    assert len(sleeps.waits) == 2
    assert sleeps.waits[0] >= 7  # Retry-After: 7
    assert 0 <= sleeps.waits[1] <= 1.0  # full jitter, second backoff bound 2 x 0.5 s
    assert response.attempts == ()  # retries are not failovers


async def test_a_400_is_not_retried_and_a_long_retry_after_is_not_waited_for(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    bad = _upstream(upstreams, "bad", UpstreamReply.error(400))
    slow = _upstream(upstreams, "slow", UpstreamReply.error(429, retry_after="3600"))
    spare = _upstream(upstreams, "spare")
    sleeps = Sleeps()
    gateway = _gateway(
        {
            "a": _spec(_openai(bad, max_retries=3)),
            "b": _spec(_openai(slow, max_retries=3)),
            "c": _spec(_openai(spare)),
        },
        sleep=sleeps,
    )
    _, response = await gateway.complete(["a", "b", "c"], REQUEST)
    assert response.decision == FinalAnswer("from spare")
    assert (upstreams["bad"].request_count, upstreams["slow"].request_count) == (1, 1)
    assert sleeps.waits == []
    assert [a.served.alias for a in response.attempts] == ["a", "b"]


async def test_the_breaker_opens_after_n_failures_and_half_opens_after_the_cool_down(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    sick = _upstream(upstreams, "sick", UpstreamReply.error(502), UpstreamReply.error(502))
    spare = _upstream(upstreams, "spare")
    clock = Clock()
    gateway = _gateway(
        {"smart": _spec(_openai(sick, weight=1000), _openai(spare))}, clock=clock, threshold=2
    )
    for _ in range(2):  # two failures: the breaker opens
        _, response = await gateway.complete(["smart"], REQUEST)
        assert response.decision == FinalAnswer("from spare")
    key = Deployment("smart", "smart#0", "openai", "m", base_url=sick).breaker_key
    assert gateway.breakers.state(key) == "open"
    _, response = await gateway.complete(["smart"], REQUEST)
    assert upstreams["sick"].request_count == 2  # passed over while open, despite its weight
    assert response.served is not None and response.served.deployment == "smart#1"
    assert response.attempts == ()
    upstreams["spare"].replies = [UpstreamReply.error(500)]
    with pytest.raises(ModelAPIError) as info:  # the spare fails: the open one is skipped
        await gateway.complete(["smart"], REQUEST)
    assert "circuit breaker opened after 2 consecutive failures" in info.value.message
    assert upstreams["sick"].request_count == 2
    clock.now += 29.9
    await gateway.complete(["smart"], REQUEST)
    assert upstreams["sick"].request_count == 2
    clock.now += 0.2  # cool-down over: one trial call, which succeeds and closes the breaker
    _, response = await gateway.complete(["smart"], REQUEST)
    assert response.decision == FinalAnswer("from sick")
    assert gateway.breakers.state(key) == "closed"
    assert upstreams["sick"].request_count == 3


async def test_a_failed_trial_call_opens_the_breaker_again(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    sick = _upstream(upstreams, "sick", *[UpstreamReply.error(500)] * 3)
    spare = _upstream(upstreams, "spare")
    clock = Clock()
    gateway = _gateway(
        {"smart": _spec(_openai(sick, weight=1000), _openai(spare))}, clock=clock, threshold=2
    )
    await gateway.complete(["smart"], REQUEST)
    await gateway.complete(["smart"], REQUEST)
    clock.now += 31
    await gateway.complete(["smart"], REQUEST)  # the trial fails
    assert upstreams["sick"].request_count == 3
    clock.now += 29
    await gateway.complete(["smart"], REQUEST)
    assert upstreams["sick"].request_count == 3  # open again for a full cool-down


async def test_same_region_deployments_come_first_and_others_are_the_failover(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    eu = _upstream(upstreams, "eu")
    us = _upstream(upstreams, "us")
    # The other region has all the weight: region preference still wins.
    spec = _spec(_openai(us, region="us-east", weight=100), _openai(eu, region="eu-west"))
    gateway = _gateway({"smart": spec}, region="eu-west")
    for _ in range(5):
        _, response = await gateway.complete(["smart"], REQUEST)
        assert response.served is not None and response.served.region == "eu-west"
    assert (upstreams["eu"].request_count, upstreams["us"].request_count) == (5, 0)
    upstreams["eu"].replies = [UpstreamReply.error(503)]
    _, response = await gateway.complete(["smart"], REQUEST)  # the region fails: failover
    assert response.served is not None and response.served.region == "us-east"
    assert [(a.served.region, a.outcome) for a in response.attempts] == [("eu-west", "failed")]


async def test_a_data_residency_caller_never_reaches_another_region(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    eu = _upstream(upstreams, "eu", UpstreamReply.error(500))
    us = _upstream(upstreams, "us")
    spec = _spec(_openai(eu, region="eu-west"), _openai(us, region="us-east", weight=100))
    gateway = _gateway({"smart": spec, "backup": _spec(_openai(us, region="us-east"))})
    with pytest.raises(ModelAPIError) as info:
        await gateway.complete(["smart", "backup"], REQUEST, residency=["eu-west"])
    assert "HTTP 500" in info.value.message
    assert "outside the agent's data_residency" in info.value.message
    assert upstreams["us"].request_count == 0
    assert upstreams["eu"].request_count == 1


async def test_a_denied_deployment_is_never_called(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    eu = _upstream(upstreams, "eu")
    us = _upstream(upstreams, "us")
    asked: list[Served | None] = []

    async def authorize(model: str, served: Served | None = None) -> str | None:
        asked.append(served)
        if served is not None and served.region == "us-east":
            return "us-east is not approved"
        return None

    spec = _spec(_openai(us, region="us-east", weight=1000), _openai(eu, region="eu-west"))
    gateway = _gateway({"smart": spec})
    _, response = await gateway.complete(["smart"], REQUEST, authorize=authorize)
    assert response.decision == FinalAnswer("from eu")
    assert upstreams["us"].request_count == 0
    assert [s.region for s in asked if s is not None] == ["us-east", "eu-west"]
    assert [(a.outcome, a.error) for a in response.attempts] == [
        ("denied", "us-east is not approved")
    ]


async def test_an_unknown_alias_names_the_known_ones() -> None:
    gateway = _gateway({"fast": _spec({"provider": "scripted", "model": "x"})})
    with pytest.raises(NotFound) as info:
        await gateway.complete(["smrt"], REQUEST)
    assert info.value.code == "model_alias_not_found"
    assert "known aliases: fast" in info.value.message


async def test_decoding_overrides_and_the_served_deployment() -> None:
    scripted = ScriptedModel([ScriptedModel.answer("hi")], name="scripted")
    spec = _spec(
        {
            "provider": "scripted",
            "model": "tiny",
            "region": "eu-west",
            "decoding": {"temperature": 0.3, "repeat_penalty": 1.2, "max_answer_chars": 99},
            "prices": {"input_usd_per_mtok": "0.5", "output_usd_per_mtok": "1.5"},
        }
    )
    gateway = _gateway({"default": spec}, scripted=scripted)
    model, response = await gateway.complete(["default"], REQUEST)
    [sent] = scripted.requests
    assert (sent.model, sent.temperature, sent.repeat_penalty, sent.max_answer_chars) == (
        "tiny",
        0.3,
        1.2,
        99,
    )
    assert model == "scripted/tiny"
    served = response.served
    assert served is not None
    assert (served.alias, served.deployment, served.provider, served.region) == (
        "default",
        "default#0",
        "scripted",
        "eu-west",
    )
    assert served.price is not None and str(served.price.output_usd_per_mtok) == "1.5"


async def test_a_deployment_api_key_is_resolved_from_the_credential_broker(
    upstreams: dict[str, FakeOpenAIUpstream],
) -> None:
    url = _upstream(upstreams, "keyed")
    rendered: list[tuple[str, str]] = []

    async def secrets(tenant_id: str, template: str) -> str:
        rendered.append((tenant_id, template))
        return "sk-test-123"

    gateway = _gateway({"smart": _spec(_openai(url, api_key="${secret:UPSTREAM_KEY}"))})
    gateway.secrets = secrets
    await gateway.complete(["smart"], REQUEST, tenant_id="acme")
    await gateway.complete(["smart"], REQUEST, tenant_id="acme")
    assert rendered == [("acme", "${secret:UPSTREAM_KEY}")] * 2
    assert upstreams["keyed"].headers[0]["authorization"] == "Bearer sk-test-123"
    assert len(gateway.deployment_providers) == 1  # one provider per (base_url, key)
    for provider in gateway.deployment_providers:
        await provider.aclose()  # type: ignore[attr-defined]


def test_weighted_choice_follows_the_weights() -> None:
    heavy = Deployment("a", "a#0", "p", "heavy", weight=3)
    light = Deployment("a", "a#1", "p", "light", weight=1)
    rng = random.Random(42)
    firsts = [
        route([heavy, light], region=None, residency=None, healthy=lambda d: True, rng=rng)[0][0]
        for _ in range(2000)
    ]
    share = sum(1 for d in firsts if d is heavy) / len(firsts)
    assert 0.70 < share < 0.80


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_the_embedded_model_is_in_this_process_region_for_data_residency() -> None:
    local = Deployment("default", "default", "local", "smollm2-135m")
    hosted = Deployment("smart", "smart#0", "openai", "gpt", region=None)
    rng = random.Random(0)
    kept, dropped = route(
        [local, hosted], region="eu-west", residency=["eu-west"], healthy=lambda d: True, rng=rng
    )
    assert (kept, [a.served.deployment for a in dropped]) == ([local], ["smart#0"])
    kept, _ = route([local], region=None, residency=["eu-west"], healthy=lambda d: True, rng=rng)
    assert kept == []  # no CORRAL_REGION: nothing says where it runs
