"""CLI: ``corral run`` (following a run over its Server-Sent Events stream) and ``corral trace``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from corral.cli._client import ApiClient, auth_headers, fail
from corral.cli._render import render_step, render_tool_call, render_trace
from corral.runtime import TERMINAL_STATUSES

if TYPE_CHECKING:
    import httpx

__all__ = ["run", "trace"]

_TERMINAL = TERMINAL_STATUSES

_STREAM_READ_TIMEOUT_SECONDS = 45.0
"""A stream silent this long is dead (the server sends a keep-alive comment every 15 s)."""

_RECONNECTS = 5
"""Reconnections in a row, without an event in between, before following gives up."""


def run(
    agent: Annotated[str, typer.Argument(help="Registered agent name.")],
    task: Annotated[str, typer.Argument(help="What the agent should do, in words.")],
    workspace: Annotated[
        Path | None,
        typer.Option(
            help="Directory the fs.* tools may read (on the server's machine). It must lie "
            "under a workspace root: CORRAL_HOME/workspaces/TENANT/ or a root the operator "
            "adds with CORRAL_WORKSPACES__ROOTS=/srv/repos:/opt/src (every tenant) or "
            'CORRAL_WORKSPACES__TENANT_ROOTS=\'{"acme": ["/srv/acme"]}\' (one tenant), '
            "then restarts Corral. CORRAL_HOME and Corral's key and database files are never "
            "a workspace.",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Print each step, tool call and pause as it happens (streamed from the server), "
            "then the answer; exit 1 unless the run SUCCEEDED.",
        ),
    ] = False,
    version: Annotated[str | None, typer.Option(help="Agent version (default: latest).")] = None,
    model: Annotated[str | None, typer.Option(help="provider/model the agent allows.")] = None,
    stage: Annotated[
        str, typer.Option(help="Release stage whose version runs (dev follows the latest).")
    ] = "dev",
    timeout: Annotated[
        float, typer.Option(help="With --follow: give up waiting after this many seconds.")
    ] = 900.0,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            help="Your session id (1-128 of A-Za-z0-9._:-); an experiment keyed by session "
            "gives every run of one session the same variant.",
        ),
    ] = None,
) -> None:
    """Start a run of AGENT on TASK and print its id (with --follow: its steps and answer).

    With --follow, a dropped connection is resumed after the last event seen;
    Ctrl-C stops following, not the run (stop that with `corral cancel RUN_ID`).

    Example: corral run repo-analyst "What does this package do?" --workspace . --follow
    """
    client = ApiClient()
    body: dict[str, Any] = {
        "task": task,
        "workspace": str(workspace) if workspace else None,
        "version": version,
        "model": model,
        "stage": stage,
    }
    if session is not None:
        body["session_id"] = session
    created = client.post(f"/v1/agents/{agent}/runs", body)
    run_id = created["id"]
    typer.echo(
        f"run {run_id} created ({created['agent_name']}@{created['agent_version']}, "
        f"model {created['model']})"
    )
    if not follow:
        typer.echo(f"Follow it with: corral describe run {run_id}")
        return
    _Follower(client, run_id, timeout).follow()
    final = client.get(f"/v1/runs/{run_id}")
    typer.echo("")
    typer.echo(
        f"Run {run_id} {final['status']} ({final['terminal_reason']}): "
        f"{final['step_count']} steps, {final['tool_call_count']} tool calls, "
        f"{final['input_tokens']} in / {final['output_tokens']} out tokens"
    )
    if final["error"]:
        typer.echo(f"Error: {final['error']}")
    if final["output"] is not None:
        typer.echo(f"Answer:\n{final['output']}")
    typer.echo(f"Trace: corral trace {run_id}")
    if final["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@dataclass(frozen=True)
class _Event:
    """One Server-Sent Event of ``GET /v1/runs/{id}/events``."""

    id: int | None
    type: str
    data: dict[str, Any]


def _parse_events(lines: Iterable[str]) -> Iterator[_Event | None]:
    """Events from a ``text/event-stream`` body, line by line; ``None`` for each comment.

    Follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
    for the fields Corral sends (``id``, ``event``, ``data``); a blank line ends an event.
    """
    event_id: int | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = json.loads("\n".join(data))
                yield _Event(event_id, event_type, payload.get("data", {}))
            event_type, data = "message", []
            continue
        if line.startswith(":"):  # a comment: the server's keep-alive
            yield None
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id" and value.isdigit():
            event_id = int(value)
        elif field == "event":
            event_type = value
        elif field == "data":
            data.append(value)


class _Follower:
    """Prints a run's events as they stream in; reconnects after the last event seen."""

    def __init__(self, client: ApiClient, run_id: str, timeout: float) -> None:
        self.client = client
        self.run_id = run_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.last_id: int | None = None
        self.finished = False

    def follow(self) -> None:
        """Print events until ``run.finished``; exit 1 on timeout or a stream that stays down."""
        import httpx  # imported by the commands that use it, not by `corral worker`

        failures = 0
        while True:
            seen = self.last_id
            try:
                self._stream()
            except httpx.TransportError as exc:  # dropped, refused, or silent past the read timeout
                problem = type(exc).__name__
            else:
                if self.finished or self._ended():
                    return
                problem = "the server ended the stream"
            failures = 0 if self.last_id != seen else failures + 1
            if failures >= _RECONNECTS:
                fail(
                    f"lost the event stream of run {self.run_id} ({problem}) {failures} times in "
                    f"a row; see where it is with `corral describe run {self.run_id}`."
                )
            self._check_deadline()
            after = f" after event {self.last_id}" if self.last_id is not None else ""
            typer.echo(f"(connection lost: {problem}; reconnecting{after})", err=True)
            time.sleep(min(0.25 * 2**failures, 4.0))

    def _stream(self) -> None:
        """Print one connection's events, from after the last one seen."""
        import httpx

        headers = {**auth_headers(), "Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        timeout = httpx.Timeout(self.client.timeout_seconds, read=_STREAM_READ_TIMEOUT_SECONDS)
        url = f"{self.client.base_url}/v1/runs/{self.run_id}/events"
        with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                _fail_with(response)
            for event in _parse_events(response.iter_lines()):
                self._check_deadline()
                if event is None:
                    continue
                if event.id is not None:
                    self.last_id = event.id
                self._print(event)
                if event.type == "run.finished":
                    self.finished = True
                    return

    def _print(self, event: _Event) -> None:
        data = event.data
        if event.type == "step":
            typer.echo(render_step({**data, "tool_calls": []}))
        elif event.type == "tool_call":
            typer.echo(render_tool_call({**data, "tool_name": data["tool"]}))
        elif event.type == "run.paused":
            typer.echo(f"paused {data.get('status')}: {data.get('reason')}")
            if data.get("status") == "IN_DOUBT":
                typer.echo(
                    f"    resolve it with: corral runs resolve {self.run_id} "
                    "--as done|retry|failed [--comment TEXT]"
                )
            typer.echo("    (still following; Ctrl-C stops following, the run stays paused)")
        elif event.type == "run.resumed":
            how = f" as {data['resolution']}" if data.get("resolution") else ""
            typer.echo(f"resumed{how} by {data.get('by')}")
        elif event.type == "run.cancel_requested":
            typer.echo(f"cancel requested by {data.get('by')}")

    def _ended(self) -> bool:
        """The server ended the stream: finished unless the run is still going."""
        return self.client.get(f"/v1/runs/{self.run_id}")["status"] in _TERMINAL

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            state = self.client.get(f"/v1/runs/{self.run_id}")
            typer.echo(f"Still {state['status']} after {self.timeout:.0f} s; stopped following.")
            raise typer.Exit(1)


def _fail_with(response: httpx.Response) -> NoReturn:
    """Exit like :class:`ApiClient` does for an error response."""
    try:
        message = response.json().get("message") or response.text
    except ValueError:
        message = response.text or response.reason_phrase
    fail(message, code=2 if response.status_code in (400, 422) else 1)


def trace(
    run_id: Annotated[str, typer.Argument(help="Run id (see `corral get runs`).")],
    output_json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON.")] = False,
) -> None:
    """Print a run's span tree (invoke_agent > chat / execute_tool) with durations and tokens."""
    spans = ApiClient().get(f"/v1/runs/{run_id}/spans")
    if output_json:
        typer.echo(json.dumps(spans, indent=2))
    elif not spans:
        typer.echo(f"No spans stored for run {run_id} yet.")
    else:
        typer.echo(render_trace(spans))
