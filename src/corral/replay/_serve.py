"""Serving replays: a model provider (recorded outputs) and a tool interceptor (recorded results).

Both are selected by the run, not by branches in the loop: a replayed run's model is
``replay/<recorded run>``, which the model gateway routes to :class:`ReplayModel` like any
``provider/model``; every run's tool call passes :class:`ReplayTools` (the tool gateway's
interceptor), which answers only the calls of runs whose ``runs.replay_of`` is set.
"""

from __future__ import annotations

from typing import Final

from corral.errors import ModelAPIError
from corral.gateway.models import ModelRequest, ModelResponse, current_model_call
from corral.gateway.tools import PreparedCall, ToolCallContext, ToolResult
from corral.replay._recording import Recording
from corral.runtime import list_steps
from corral.store import Store

__all__ = ["REPLAY_PROVIDER", "Recordings", "ReplayModel", "ReplayTools"]

REPLAY_PROVIDER: Final = "replay"
"""The provider part of a replayed run's model name, ``replay/<recorded run id>``."""

_MAX_CACHED: Final = 10_000
"""Recordings kept in memory before the caches are reset."""


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


class ReplayTools:
    """The tool gateway's interceptor: replayed runs get recorded results, never side effects.

    A call of a replayed run is answered with the recorded outcome of the same tool with the
    same canonical arguments (the same step and position first). A call with no recorded
    outcome runs if its tool is read-only; a side-effecting one is ``DENIED``
    (``replay_unrecorded``), so a replay never repeats nor adds an effect. Calls of other
    runs pass through without a read: whether a run replays is ``runs.replay_of``, loaded
    with the run and carried in :attr:`ToolCallContext.replay_of`.
    """

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings

    async def intercept(self, ctx: ToolCallContext, prepared: PreparedCall) -> ToolResult | None:
        """The recorded result for a replayed run's call, a refusal, or ``None`` to execute."""
        source_run_id = ctx.replay_of
        if source_run_id is None:
            return None
        recording = await self.recordings.get(ctx.tenant_id, source_run_id)
        tool = prepared.tool
        recorded = recording.call(
            tool.name, prepared.arguments, step_index=ctx.step_index, call_index=ctx.call_index
        )
        if recorded is not None:
            return recorded.result(tool.version)
        if tool.contract.spec.side_effect == "read":
            return None
        message = (
            f"replay: run {source_run_id!r} recorded no result for this call of "
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
