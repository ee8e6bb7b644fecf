"""Cost of the credential broker: redaction, the per-call scope, reveal and render (SQLite).

```bash
. .venv/bin/activate
python benchmarks/secrets_broker.py            # about 20 seconds on 2 cores
python benchmarks/secrets_broker.py --calls 2000
```

Rows, each p50 / p99 in microseconds over ``--calls`` sequential calls:

* ``redact 16 KiB, no secret``: what every tool call pays when it revealed nothing.
* ``redact 16 KiB, 1 secret``: output of a call that revealed one value (all encodings).
* ``scope + check setup``: the secret scope and ``secret.use`` check the gateway sets up around
  every execution (nothing revealed).
* ``baseline: store.read SELECT 1``: an empty read transaction, for scale (the machine's
  thread hand-offs to aiosqlite dominate both it and ``reveal``).
* ``reveal``: one read + AES-GCM unwrap and decrypt.
* ``render, policy checked``: ``secret.use`` decision, its stored decision and audit event
  (one write transaction), then reveal.
* ``render, use folded in call``: the same decision handed to the tool call's recorder (stored
  with the call's own rows, as the governed-call pipeline does), then reveal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

from corral.contracts import parse_document
from corral.platform import Platform
from corral.policy import Entity, EntityRef
from corral.registry import apply_documents
from corral.secrets import redact_secrets, secret_scope
from corral.settings import Settings

AGENT = Entity(
    EntityRef("Agent", "deployer"),
    {"tenant": "default", "owner": "ops", "risk_tier": "low", "status": "active"},
)
TOOL = Entity(
    EntityRef("Tool", "http.deploy"),
    {"tenant": "default", "owner": "ops", "side_effect": "write", "risk": "medium", "kind": "http"},
)
PERMIT = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "deploy-key"},
    "spec": {
        "description": "The deployer may use the deploy key.",
        "cedar": 'permit (principal == Agent::"deployer", action == Action::"secret.use", '
        'resource) when { context has secret && context.secret == "deploy-key" };',
    },
}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def timed_sync(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


async def timed(fn: Callable[[], Awaitable[object]], calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


async def main(calls: int) -> None:
    value = f"sk-{secrets.token_urlsafe(24)}"
    output = ("lorem ipsum dolor sit amet " * 700)[:16_000]
    leaky = output[:8000] + value + base64.b64encode(value.encode()).decode() + output[8000:]
    rows = [
        ("redact 16 KiB, no secret", timed_sync(lambda: redact_secrets(output, []), calls)),
        ("redact 16 KiB, 1 secret", timed_sync(lambda: redact_secrets(leaky, [value]), calls)),
    ]
    home = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    key = base64.b64encode(os.urandom(32)).decode()
    platform = Platform(Settings(home=home, secrets={"master_key": key}))
    await platform.start()
    try:
        broker = platform.secrets
        await broker.set("default", "deploy-key", value, actor="user:bench")
        async with platform.store.transaction("default") as session:
            await apply_documents(
                session, [parse_document(PERMIT)], tenant_id="default", actor="user:bench"
            )

        def scope() -> None:
            check = broker.use_check("default", principal=AGENT, resource=TOOL, stage="dev")
            with secret_scope(check):
                pass

        rows.append(("scope + check setup", timed_sync(scope, calls)))

        async def bare_read() -> None:
            async with platform.store.read("default") as session:
                await session.execute(text("SELECT 1"))

        rows.append(("baseline: store.read SELECT 1", await timed(bare_read, calls)))
        rows.append(("reveal", await timed(lambda: broker.reveal("default", "deploy-key"), calls)))
        check = broker.use_check("default", principal=AGENT, resource=TOOL, stage="dev")
        rendered = await timed(
            lambda: broker.render("default", "Bearer ${secret:deploy-key}", check=check),
            max(calls // 4, 50),
        )
        rows.append(("render, policy checked", rendered))
        # As a governed call does it: the decision row and audit event go to the call's recorder
        # (stored with the call's own rows), no transaction of its own.
        kept: list[object] = []
        folded_check = broker.use_check(
            "default", principal=AGENT, resource=TOOL, stage="dev", record=lambda *r: kept.append(r)
        )
        folded = await timed(
            lambda: broker.render("default", "Bearer ${secret:deploy-key}", check=folded_check),
            max(calls // 4, 50),
        )
        rows.append(("render, use folded in call", folded))
    finally:
        await platform.close()
    print(f"{'':28}{'p50 us':>10}{'p99 us':>10}")
    for name, (p50, p99) in rows:
        print(f"{name:28}{p50:10.1f}{p99:10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    asyncio.run(main(parser.parse_args().calls))
