"""The credential broker: tenant-scoped secrets, encrypted at rest, injected only into tool calls.

Values are sealed with an AES-256-GCM envelope (a data key per version, wrapped by the master
key, bound to tenant, secret and version). Tool executors call
``platform.secrets.render(tenant_id, "Bearer ${secret:NAME}")`` at execution time: each name
passes the ``secret.use`` policy check, and the tool gateway redacts every revealed value from
the call's output. Values never reach the model context, spans, logs, audit events, policy
decisions or API responses.

```python
from corral.secrets import redact_secrets

assert redact_secrets("token=s3cr3t-value", ["s3cr3t-value"]) == "token=[REDACTED:secret]"
```
"""

from corral.secrets._crypto import KEY_FILE_NAME, MasterKey, decode_master_key
from corral.secrets._redact import (
    REDACTED,
    RevealedSecrets,
    SecretCheck,
    current_secret_scope,
    redact_secrets,
    secret_scope,
)
from corral.secrets._service import (
    SECRET_NAME_PATTERN,
    SECRET_REFERENCE_PATTERN,
    SecretBroker,
    SecretInfo,
    check_secret_name,
    secret_references,
)

__all__ = [
    "KEY_FILE_NAME",
    "REDACTED",
    "SECRET_NAME_PATTERN",
    "SECRET_REFERENCE_PATTERN",
    "MasterKey",
    "RevealedSecrets",
    "SecretBroker",
    "SecretCheck",
    "SecretInfo",
    "check_secret_name",
    "current_secret_scope",
    "decode_master_key",
    "redact_secrets",
    "secret_references",
    "secret_scope",
]
