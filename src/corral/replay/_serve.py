"""Serving replays: a model provider (recorded outputs) and a tool interceptor (recorded results).

Both are selected by the run, not by branches in the loop: a replayed run's model is
``replay/<recorded run>``, which the model gateway routes to :class:`ReplayModel` like any
``provider/model``; every run's tool call passes :class:`ReplayTools` (the tool gateway's
interceptor), which answers only the calls of runs that have a :class:`ReplayRow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from sqlalchemy import Table, bindparam, select

from corral.errors import ModelAPIError
from corral.gateway.models import ModelRequest, ModelResponse, current_model_call
from corral.gateway.tools import PreparedCall, ToolCallContext, ToolResult
from corral.replay._recording import Recording
from corral.replay._tables import ReplayRow
from corral.runtime import list_steps
from corral.store import Store

__all__ = ["REPLAY_PROVIDER", "Recordings", "ReplayModel", "ReplayTools"]

REPLAY_PROVIDER: Final = "replay"
"""The provider part of a replayed run's model name, ``replay/<recorded run id>``."""

_MAX_CACHED: Final = 10_000
"""Runs (recordings, and whether a run replays) kept in memory before the caches are reset."""

_REPLAYS = cast(Table, ReplayRow.__table__)
_REPLAY_OF = select(_REPLAYS.c.source_run_id, _REPLAYS.c.mode).where(
    _REPLAYS.c.tenant_id == bindparam("b_tenant"), _REPLAYS.c.run_id == bindparam("b_run")
)


class Recordings:
    """Recorded runs, read once per process (a finished run's steps never change).

    Args:
        store: The store the recorded runs are read from, in their tenant's scope.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], Recording] = {}

    async def get(self, tenant_id: str, run_id: str) -> Recording:
        """The recording of the tenant's run ``run_id``.

        Raises:
            NotFound: the tenant has no such run.
        """
        found = self._cache.get((tenant_id, run_id))
        if found is None:
            async with self.store.read(tenant_id) as session:
                steps = await list_steps(session, run_id, tenant_id=tenant_id)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            found = self._cache[(tenant_id, run_id)] = Recording.of(run_id, steps)
        return found


class ReplayModel:
    """A :class:`~corral.gateway.models.ModelProvider` answering with a recorded run's outputs.

    The model name's part after ``replay/`` is the recorded run; the run being served is the
    gateway's current call (:func:`~corral.gateway.models.current_model_call`), so a run only
    ever reads a recorded run of its own tenant. The n-th call of a run (n counted by the
    assistant turns already in its context) gets the n-th recorded output, parsed or invalid
    as it was. Usage is zero: nothing is generated.
    """

    name = REPLAY_PROVIDER

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The recorded output for this point of the run.

        Raises:
            ModelAPIError: called outside a tenant's run, or past the recorded outputs.
        """
        scope = current_model_call()
        if scope.tenant_id is None or scope.run_id is None:
            raise ModelAPIError(
                "the replay provider serves replayed runs only (`corral runs replay RUN`)",
                provider=REPLAY_PROVIDER,
            )
        recording = await self.recordings.get(scope.tenant_id, request.model)
        index = sum(1 for message in request.messages if message.role == "assistant")
        response = recording.response(index)
        if response is None:
            raise ModelAPIError(
                f"run {request.model!r} recorded {len(recording.decisions)} model outputs and "
                f"the replay asked for output {index + 1}: the replay diverged from the "
                "recording; compare the two runs' steps with `corral describe run`",
                provider=REPLAY_PROVIDER,
            )
        return response


@dataclass(frozen=True)
class _Replay:
    source_run_id: str
    mode: str


class ReplayTools:
    """The tool gateway's interceptor: replayed runs get recorded results, never side effects.

    A call of a replayed run is answered with the recorded outcome of the same tool with the
    same canonical arguments (the same step and position first). A call with no recorded
    outcome runs if its tool is read-only; a side-effecting one is ``DENIED``
    (``replay_unrecorded``), so a replay never repeats nor adds an effect. Calls of other
    runs pass through (whether a run replays is read once per run and process).
    """

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings
        self._runs: dict[str, _Replay | None] = {}

    async def intercept(self, ctx: ToolCallContext, prepared: PreparedCall) -> ToolResult | None:
        """The recorded result for a replayed run's call, a refusal, or ``None`` to execute."""
        assert ctx.run_id is not None
        replay = await self._replay_of(ctx.tenant_id, ctx.run_id)
        if replay is None:
            return None
        recording = await self.recordings.get(ctx.tenant_id, replay.source_run_id)
        tool = prepared.tool
        recorded = recording.call(
            tool.name, prepared.arguments, step_index=ctx.step_index, call_index=ctx.call_index
        )
        if recorded is not None:
            return recorded.result(tool.version)
        if tool.contract.spec.side_effect == "read":
            return None
        message = (
            f"replay: run {replay.source_run_id!r} recorded no result for this call of "
            f"{tool.name!r} (side_effect: {tool.contract.spec.side_effect}), and a replay never "
            "executes a side-effecting call; run the agent normally to try it"
        )
        return ToolResult(
            "DENIED",
            message,
            error=message,
            error_type="replay_unrecorded",
            tool_version=tool.version,
        )

    async def _replay_of(self, tenant_id: str, run_id: str) -> _Replay | None:
        if run_id in self._runs:
            return self._runs[run_id]
        # Every run's first call asks: one indexed read, without a session (the hot path).
        row = await self.recordings.store.read_sync(
            lambda connection: connection.execute(
                _REPLAY_OF, {"b_tenant": tenant_id, "b_run": run_id}
            ).first(),
            tenant_id,
        )
        if len(self._runs) >= _MAX_CACHED:
            self._runs.clear()
        replay = None if row is None else _Replay(row.source_run_id, row.mode)
        self._runs[run_id] = replay
        return replay
