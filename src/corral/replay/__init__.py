"""Replay: re-run a recorded run as a new run, never repeating a side effect.

``exact`` replays give the recorded model outputs and tool results back (the same calls, the
same answer); ``what_if`` replays let another agent version decide, with the recorded tool
results where its calls match. Both are a model provider (:class:`ReplayModel`) and a tool
interceptor (:class:`ReplayTools`) the platform installs on its gateways.
"""

from corral.replay._recording import RecordedCall, Recording
from corral.replay._serve import REPLAY_PROVIDER, Recordings, ReplayModel, ReplayTools
from corral.replay._service import ReplayMode, ReplayStarted, start_replay
from corral.replay._tables import ReplayRow

__all__ = [
    "REPLAY_PROVIDER",
    "RecordedCall",
    "Recording",
    "Recordings",
    "ReplayMode",
    "ReplayModel",
    "ReplayRow",
    "ReplayStarted",
    "ReplayTools",
    "start_replay",
]
