"""Test doubles for users' tests and benchmarks: a scripted model provider.

```python
from corral.testing import ScriptedModel

model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("ok")])
```
"""

from corral.testing._scripted import EXHAUSTED_ANSWER, ScriptedModel, ScriptFunction, ScriptStep

__all__ = ["EXHAUSTED_ANSWER", "ScriptFunction", "ScriptStep", "ScriptedModel"]
