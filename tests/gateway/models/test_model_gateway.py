"""The model gateway asks its authorizer before each model it would call."""

from __future__ import annotations

import pytest
from opentelemetry.trace import NoOpTracer

from corral.errors import ModelAPIError, PolicyDenied
from corral.gateway.models import FinalAnswer, Message, ModelRequest
from corral.gateway.models._gateway import ModelGateway
from corral.testing import ScriptedModel

REQUEST = ModelRequest(model="", messages=[Message("user", "hi")])


def _down(_request: ModelRequest) -> FinalAnswer:
    raise ModelAPIError("down", provider="a")


class Authorizer:
    """Refuses the models in ``denied``; remembers every model it was asked about."""

    def __init__(self, *denied: str) -> None:
        self.denied = set(denied)
        self.asked: list[str] = []

    async def __call__(self, model: str, served: object = None) -> str | None:
        self.asked.append(model)
        return f"{model} is forbidden" if model in self.denied else None


def _gateway(**providers: ScriptedModel) -> ModelGateway:
    return ModelGateway(providers, NoOpTracer())


async def test_each_model_is_authorized_before_it_is_called_and_denied_ones_are_skipped() -> None:
    b = ScriptedModel([ScriptedModel.answer("b")], name="b")
    c = ScriptedModel([ScriptedModel.answer("c")], name="c")
    authorize = Authorizer("b/1")
    gateway = _gateway(a=ScriptedModel(_down, name="a"), b=b, c=c)
    model, response = await gateway.complete(["a/1", "b/1", "c/1"], REQUEST, authorize=authorize)
    assert (model, response.decision) == ("c/1", FinalAnswer("c"))
    assert authorize.asked == ["a/1", "b/1", "c/1"]
    assert (len(b.requests), len(c.requests)) == (0, 1)


async def test_a_model_that_answers_ends_the_authorizing() -> None:
    authorize = Authorizer()
    gateway = _gateway(a=ScriptedModel([ScriptedModel.answer("a")], name="a"))
    model, _ = await gateway.complete(["a/1", "a/2"], REQUEST, authorize=authorize)
    assert (model, authorize.asked) == ("a/1", ["a/1"])  # a fallback not reached is not decided


async def test_every_model_denied_raises_policy_denied_with_the_first_refusal() -> None:
    a = ScriptedModel([ScriptedModel.answer("a")], name="a")
    with pytest.raises(PolicyDenied) as info:
        await _gateway(a=a).complete(["a/1", "a/2"], REQUEST, authorize=Authorizer("a/1", "a/2"))
    assert (info.value.code, info.value.message) == ("model_denied", "a/1 is forbidden")
    assert a.requests == []


async def test_failures_and_denials_raise_the_last_failure_naming_the_skipped_models() -> None:
    gateway = _gateway(a=ScriptedModel(_down, name="a"))
    with pytest.raises(ModelAPIError) as info:
        await gateway.complete(["a/1", "a/2"], REQUEST, authorize=Authorizer("a/2"))
    assert info.value.message == "down (not tried, denied by policy: a/2)"
