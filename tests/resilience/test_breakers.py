"""The circuit breaker state machine, in process memory and shared through Redis."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from corral.resilience import CircuitBreakers

REDIS_URL = "redis://127.0.0.1:6379"


def _redis_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


class Clock:
    """Seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def storage_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    if request.param == "memory":
        yield None
        return
    if not _redis_reachable():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    yield REDIS_URL


def breakers(storage_url: str | None, clock: Clock, namespace: str) -> CircuitBreakers:
    return CircuitBreakers(2, 10.0, clock=clock, storage_url=storage_url, namespace=namespace)


async def test_opens_at_the_threshold_and_lets_one_trial_through(storage_url: str | None) -> None:
    clock, namespace = Clock(), uuid.uuid4().hex
    b = breakers(storage_url, clock, namespace)
    assert (await b.acquire("u")).allowed
    await b.record_failure("u")
    assert (b.state("u"), b.failures("u")) == ("closed", 1)
    await b.record_failure("u")
    assert b.state("u") == "open"
    refused = await b.acquire("u")
    assert (refused.allowed, refused.failures, refused.retry_after_seconds) == (False, 2, 10.0)
    clock.now += 10
    assert b.state("u") == "half_open"
    assert (await b.acquire("u")).allowed  # the trial
    second = await b.acquire("u")
    assert not second.allowed and second.retry_after_seconds == 10.0  # one trial at a time
    await b.record_failure("u")  # the trial failed: open again
    assert b.state("u") == "open"
    clock.now += 10
    assert (await b.acquire("u")).allowed
    await b.record_success("u")
    assert (b.state("u"), b.failures("u"), b.snapshot()) == ("closed", 0, {})
    await b.clear()


async def test_a_released_trial_frees_the_slot(storage_url: str | None) -> None:
    clock = Clock()
    b = breakers(storage_url, clock, uuid.uuid4().hex)
    await b.record_failure("u")
    await b.record_failure("u")
    clock.now += 10
    assert (await b.acquire("u")).allowed
    assert not (await b.acquire("u")).allowed
    await b.release("u")  # the trial was cancelled: neither an answer nor a failure
    assert (await b.acquire("u")).allowed
    await b.clear()


async def test_a_dead_trial_holds_its_slot_for_one_reset_period(storage_url: str | None) -> None:
    clock = Clock()
    b = breakers(storage_url, clock, uuid.uuid4().hex)
    await b.record_failure("u")
    await b.record_failure("u")
    clock.now += 10
    assert (await b.acquire("u")).allowed  # its process dies: no success, failure or release
    clock.now += 9
    assert not (await b.acquire("u")).allowed
    clock.now += 1
    assert (await b.acquire("u")).allowed
    await b.clear()


async def test_replicas_share_a_breaker_through_redis() -> None:
    if not _redis_reachable():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    clock, namespace = Clock(), uuid.uuid4().hex
    api, worker = breakers(REDIS_URL, clock, namespace), breakers(REDIS_URL, clock, namespace)
    await api.record_failure("deployment-a")
    await worker.record_failure("deployment-a")  # two processes, one count
    assert worker.state("deployment-a") == "open"
    assert api.state("deployment-a") == "closed"  # what the API process last saw
    refused = await api.acquire("deployment-a")  # authoritative: read from Redis
    assert (refused.allowed, refused.failures, api.state("deployment-a")) == (False, 2, "open")
    clock.now += 10
    assert (await api.acquire("deployment-a")).allowed
    assert not (await worker.acquire("deployment-a")).allowed  # the API holds the trial
    await api.record_success("deployment-a")
    assert (await worker.acquire("deployment-a")).allowed
    assert worker.state("deployment-a") == "closed"
    await api.clear()


def test_a_storage_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Redis URL"):
        CircuitBreakers(storage_url="memcached://127.0.0.1:11211")
