"""Structured logs: JSON lines (console on a terminal), the run and request context on every
line, stdlib and uvicorn loggers routed through structlog, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends
from test_spans import run_and_spans

from conftest import PrincipalKeys, log_lines
from corral.api import create_app
from corral.api._deps import authenticate
from corral.observability import bind_log_context, configure_logging, get_logger
from corral.platform import Platform
from corral.secrets import REDACTED, secret_scope
from corral.settings import LogSettings, Settings
from corral.tenancy import Principal
from corral.testing import ScriptedModel

log = get_logger("corral.tests.logging")


def test_lines_are_json_with_the_bound_context(json_logs: io.StringIO) -> None:
    with bind_log_context(run_id="run_1", tenant_id="acme", principal="user:alice", skip=None):
        log.info("step %d checkpointed", 3, tool_calls=2)
    logging.getLogger("some.library").debug("plain %s", "stdlib")
    first, second = log_lines(json_logs)
    assert first["event"] == "step 3 checkpointed"
    assert (first["level"], first["logger"], first["tool_calls"]) == ("info", log.name, 2)
    assert (first["run_id"], first["tenant_id"], first["principal"]) == (
        "run_1",
        "acme",
        "user:alice",
    )
    assert "skip" not in first and first["timestamp"].endswith("Z")
    # Outside the block the context is gone; stdlib lines are structured the same way.
    assert second["event"] == "plain stdlib" and second["logger"] == "some.library"
    assert "run_id" not in second and second["level"] == "debug"


def test_uvicorn_logs_go_through_the_same_handler(json_logs: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("Application startup failed")
    [line] = log_lines(json_logs)
    assert (line["logger"], line["level"]) == ("uvicorn.error", "warning")


def test_the_level_setting_filters_and_auto_picks_console_on_a_terminal(
    json_logs: io.StringIO,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    configure_logging(LogSettings(format="auto", level="warning"), stream=terminal)
    log.info("not written")
    log.warning("disk almost full", free_bytes=10)
    written = terminal.getvalue()
    assert "not written" not in written
    assert "disk almost full" in written and "free_bytes" in written
    assert not written.lstrip().startswith("{")  # key=value text, not JSON
    assert json_logs.getvalue() == ""  # the handler was replaced, not added

    piped = io.StringIO()
    configure_logging(LogSettings(format="auto"), stream=piped)
    log.warning("disk almost full")
    assert json.loads(piped.getvalue())["event"] == "disk almost full"


def test_no_secret_in_a_log_line(json_logs: io.StringIO) -> None:
    api_key = "crl_0123456789ab_" + "K" * 43
    value = "s3cr3t-planted-value"
    with secret_scope() as revealed:
        revealed.add(value)
        headers = {"Authorization": "Bearer abc.def.ghi"}
        log.debug("calling upstream with %s", value, headers=headers)
        logging.getLogger("careless.tool").warning("retrying with token=%s", value.upper())
    log.info("key presented", authorization=api_key, password="hunter22", note=f"key {api_key}")
    try:
        raise RuntimeError("upstream said: Basic dXNlcjpwYXNzd29yZA==")
    except RuntimeError:
        log.exception("call failed")
    text = json_logs.getvalue()
    for leaked in (value, value.upper(), "abc.def.ghi", api_key, "hunter22", "dXNlcjpwYXNzd29yZA"):
        assert leaked not in text
    calling, retrying, presented, failed = log_lines(json_logs)
    assert calling["event"] == f"calling upstream with {REDACTED}"
    assert calling["headers"] == {"Authorization": REDACTED}
    assert retrying["event"] == f"retrying with token={REDACTED}"
    assert presented["note"] == f"key crl_0123456789ab_{REDACTED}"  # the key id stays
    assert presented["password"] == REDACTED
    assert f"Basic {REDACTED}" in failed["exception"]


async def test_a_run_logs_with_its_ids_and_trace(
    json_logs: io.StringIO, make_platform: Any, workspace: Path
) -> None:
    platform = await make_platform(scripted=ScriptedModel([ScriptedModel.answer("42")]))
    run, spans = await run_and_spans(platform, workspace)
    [ended] = [line for line in log_lines(json_logs) if line["event"] == "run segment ended"]
    [root] = [s for s in spans if s["name"].startswith("invoke_agent")]
    assert (ended["run_id"], ended["tenant_id"], ended["principal"]) == (
        run.id,
        "default",
        "user:test",
    )
    assert (ended["trace_id"], ended["span_id"]) == (run.trace_id, root["span_id"])
    assert (ended["status"], ended["worker_id"]) == ("SUCCEEDED", platform.worker.worker_id)


async def test_an_api_request_logs_with_its_tenant_and_principal(
    json_logs: io.StringIO, settings: Settings
) -> None:
    app = create_app(Platform(settings))

    @app.get("/v1/logging-probe")
    async def probe(caller: Annotated[Principal, Depends(authenticate)]) -> dict[str, str]:
        log.info("probe handled")
        return {"id": caller.id}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(app.state.platform),
        ) as client,
    ):
        response = await client.get("/v1/logging-probe")
    assert response.json() == {"id": "user:local-admin"}
    [line] = [line for line in log_lines(json_logs) if line["event"] == "probe handled"]
    assert (line["tenant_id"], line["principal"]) == ("default", "user:local-admin")
