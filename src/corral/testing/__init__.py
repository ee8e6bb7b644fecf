"""Test doubles for users' tests and benchmarks: scripted model, servers, OTLP, OIDC provider.

```python
from corral.testing import ScriptedModel

model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("ok")])
```
"""

from corral.testing._chat_upstream import DEFAULT_USAGE, FakeChatUpstream, ReplyFunction
from corral.testing._clock import ManualClock
from corral.testing._oidc import FakeOidcProvider
from corral.testing._otlp import OtlpReceiver, ReceivedMetric, ReceivedPoint, ReceivedSpan
from corral.testing._scripted import EXHAUSTED_ANSWER, ScriptedModel, ScriptFunction, ScriptStep
from corral.testing._server import serve_in_thread
from corral.testing._upstream import FakeOpenAIUpstream, UpstreamReply

__all__ = [
    "DEFAULT_USAGE",
    "EXHAUSTED_ANSWER",
    "FakeChatUpstream",
    "FakeOidcProvider",
    "FakeOpenAIUpstream",
    "ManualClock",
    "OtlpReceiver",
    "ReceivedMetric",
    "ReceivedPoint",
    "ReceivedSpan",
    "ReplyFunction",
    "ScriptFunction",
    "ScriptStep",
    "ScriptedModel",
    "UpstreamReply",
    "serve_in_thread",
]
