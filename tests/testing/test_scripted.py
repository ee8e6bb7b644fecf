import asyncio
import time

from corral.gateway.models import (
    FinalAnswer,
    Message,
    ModelProvider,
    ModelRequest,
    ToolCall,
    ToolDefinition,
)
from corral.testing import EXHAUSTED_ANSWER, ScriptedModel

READ_FILE = ToolDefinition(
    name="fs.read_file",
    description="Read a file.",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}}},
)


def request(text: str = "hello", *, tools: list[ToolDefinition] | None = None) -> ModelRequest:
    return ModelRequest(
        model="test",
        messages=[Message("system", "be brief"), Message("user", text)],
        tools=[READ_FILE] if tools is None else tools,
    )


def test_is_a_model_provider_named_scripted() -> None:
    assert isinstance(ScriptedModel([]), ModelProvider)
    assert ScriptedModel([]).name == "scripted"
    assert ScriptedModel([], name="openai").name == "openai"


async def test_list_script_replays_steps_in_order_then_is_exhausted() -> None:
    model = ScriptedModel(
        [ScriptedModel.call("fs.read_file", path="a.txt"), ScriptedModel.answer("done")]
    )

    first = await model.complete(request())
    second = await model.complete(request())
    third = await model.complete(request())

    assert first.decision == [ToolCall("call_0", "fs.read_file", {"path": "a.txt"})]
    assert first.raw == '{"tool": "fs.read_file", "arguments": {"path": "a.txt"}}'
    assert first.error is None
    assert second.decision == FinalAnswer("done")
    assert second.raw == '{"final_answer": "done"}'
    assert third.decision == FinalAnswer(EXHAUSTED_ANSWER) == FinalAnswer("script exhausted")
    assert model.remaining == 0


def test_call_accepts_an_argument_called_name() -> None:
    call = ScriptedModel.call("registry.get", name="weather", version=2)

    assert call == ToolCall("call_0", "registry.get", {"name": "weather", "version": 2})


async def test_list_of_calls_gets_unique_ids() -> None:
    model = ScriptedModel(
        [
            [
                ScriptedModel.call("fs.read_file", path="a"),
                ScriptedModel.call("fs.read_file", path="b"),
            ]
        ]
    )

    response = await model.complete(request())

    assert response.decision == [
        ToolCall("call_0", "fs.read_file", {"path": "a"}),
        ToolCall("call_1", "fs.read_file", {"path": "b"}),
    ]


async def test_explicit_distinct_ids_are_kept() -> None:
    calls = [ToolCall("x", "fs.read_file", {}), ToolCall("y", "fs.read_file", {})]

    response = await ScriptedModel([calls]).complete(request())

    assert response.decision == calls


async def test_raw_text_steps_are_parsed_like_model_output() -> None:
    model = ScriptedModel(
        [
            '{"tool": "fs.read_file", "arguments": {"path": "a.txt"}}',
            "I think the answer is 42",
            '{"tool": "web.search", "arguments": {}}',
            '{"final_answer": "42"}',
        ]
    )

    valid = await model.complete(request())
    not_json = await model.complete(request())
    unknown_tool = await model.complete(request())
    answer = await model.complete(request())

    assert valid.decision == [ToolCall("call_0", "fs.read_file", {"path": "a.txt"})]
    assert not_json.decision is None
    assert not_json.raw == "I think the answer is 42"
    assert not_json.error is not None and "not valid JSON" in not_json.error
    assert unknown_tool.decision is None
    assert unknown_tool.error is not None and "unknown tool 'web.search'" in unknown_tool.error
    assert answer.decision == FinalAnswer("42")


async def test_raw_text_is_checked_against_the_tools_of_the_request() -> None:
    model = ScriptedModel(['{"tool": "fs.read_file", "arguments": {}}'])

    response = await model.complete(request(tools=[]))

    assert response.decision is None
    assert response.error is not None and "available tools: none" in response.error


async def test_function_script_sees_the_request() -> None:
    def echo(req: ModelRequest) -> FinalAnswer:
        return FinalAnswer(f"you said {req.messages[-1].content!r} ({len(req.tools)} tools)")

    model = ScriptedModel(echo)

    response = await model.complete(request("hi"))

    assert response.decision == FinalAnswer("you said 'hi' (1 tools)")
    assert model.remaining == 0


async def test_async_function_script() -> None:
    async def decide(req: ModelRequest) -> str:
        await asyncio.sleep(0)
        return '{"final_answer": "async"}'

    response = await ScriptedModel(decide).complete(request())

    assert response.decision == FinalAnswer("async")


async def test_requests_are_recorded_for_assertions() -> None:
    model = ScriptedModel([ScriptedModel.answer("a"), ScriptedModel.answer("b")])

    await model.complete(request("first"))
    await model.complete(request("second"))

    assert [r.messages[-1].content for r in model.requests] == ["first", "second"]


async def test_usage_is_estimated_from_characters() -> None:
    history = ModelRequest(
        model="test",
        messages=[
            Message("user", "x" * 40),
            Message("assistant", "", tool_calls=(ToolCall("c", "t", {}),)),
            Message("tool", "y" * 20, tool_call_id="c"),
        ],
    )
    model = ScriptedModel([ScriptedModel.answer("z" * 100)])

    response = await model.complete(history)

    call_json = len('{"tool": "t", "arguments": {}}')
    assert response.usage.input_tokens == (40 + call_json + 20) // 4
    assert response.usage.output_tokens == len(response.raw) // 4
    assert response.response_model == "test"


async def test_delay_lets_concurrent_calls_overlap() -> None:
    model = ScriptedModel(lambda req: FinalAnswer("ok"), delay_seconds=0.2)

    started = time.monotonic()
    responses = await asyncio.gather(*(model.complete(request()) for _ in range(10)))
    elapsed = time.monotonic() - started

    assert all(r.decision == FinalAnswer("ok") for r in responses)
    assert 0.2 <= elapsed < 1.0
    assert len(model.requests) == 10
