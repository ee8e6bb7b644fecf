"""The composition root: one object that wires store, gateways, runtime and tracing together.

``corral up`` builds one :class:`Platform` from settings and serves it; tests build one on a
temporary store with :class:`corral.testing.ScriptedModel` as a provider.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select

from corral._files import make_home_private, write_private_file
from corral.approvals import install_approval_effects
from corral.audit import settle_chains
from corral.cache import StoreResponseCache, StoreToolResultCache
from corral.costs import daily_model_usage
from corral.errors import CorralError, LocalModelUnavailable, ModelAPIError
from corral.evals import latest_eval
from corral.feedback import FeedbackSuccess
from corral.gateway.models import (
    LocalModelServer,
    Message,
    ModelCatalog,
    ModelGateway,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    RetryPolicy,
    Served,
    local_provider,
)
from corral.gateway.tools import BuiltinTool, ToolGateway
from corral.observability import (
    Check,
    Probe,
    Readiness,
    RedisClients,
    SpanRow,
    Tracing,
    check_disk,
    check_redis,
    check_store,
    new_trace_id,
    otlp_metric_exporter,
    record_child_span,
    register_breakers,
    run_probes,
    set_queue_depth,
)
from corral.policy import (
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    decision_row,
    insert_decisions,
    principal_ref,
)
from corral.registry import apply_documents, default_models, tenant_models
from corral.releases import evaluate_releases
from corral.replay import REPLAY_PROVIDER, Recordings, ReplayModel, ReplayTools
from corral.resilience import CircuitBreakers
from corral.runtime import (
    APPROVAL_EFFECTS,
    RunApprovalEffects,
    RunExecutor,
    Worker,
    Workspaces,
    count_queued_runs,
)
from corral.secrets import KEY_FILE_NAME, SecretBroker
from corral.settings import Settings
from corral.slo import SloEvaluator
from corral.store import (
    DEFAULT_TENANT,
    SYSTEM,
    Store,
    check_pool_capacity,
    ensure_migrated,
    upgrade,
)
from corral.tenancy import Identity, Quotas, TenantRow, create_local_admin_key

if TYPE_CHECKING:  # the MCP SDK is imported when an MCP server is first used
    from corral.contracts import ModelSpec
    from corral.gateway.mcp import McpExecutor, McpPool

__all__ = ["ADMIN_KEY_FILE", "ModelTest", "Platform", "UnavailableProvider"]

ADMIN_KEY_FILE = "admin.key"
"""The local admin's key under ``CORRAL_HOME`` (written by ``corral up``, read by the CLI)."""

log = logging.getLogger(__name__)

# Approvals build on neither the runtime nor the registry (both raise requests): what a decision
# does to the waiting run or promotion is wired in here, at the composition root.
install_approval_effects(APPROVAL_EFFECTS)


class UnavailableProvider:
    """Stands in for a provider that could not start; every call fails with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Raise the reason the provider is unavailable.

        Raises:
            ModelAPIError: always.
        """
        raise ModelAPIError(self.reason, provider=self.name)


class _McpOnDemand:
    """Stands in for the tool gateway's MCP executor until an ``mcp`` tool is called.

    Importing the MCP SDK costs about 200 modules and 18 MB; a worker whose agents call no MCP
    tool never pays it. Every attribute (``call``...) is the real executor's, built on first
    access by :attr:`Platform.mcp_executor`.
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def __getattr__(self, name: str) -> Any:
        return getattr(self._platform.mcp_executor, name)


@dataclass(frozen=True)
class ModelTest:
    """The outcome of :meth:`Platform.test_model`.

    Attributes:
        model: ``provider/model`` of the deployment that answered.
        response: Its response (``served``, ``usage``, ``cost_usd``, ``attempts``...).
        latency_ms: Milliseconds for the whole gateway call, retries and failovers included.
        trace_id: The trace of the call's spans (``chat {model}``, policy decisions), stored
            like every other call's (32 hex digits).
    """

    model: str
    response: ModelResponse
    latency_ms: float
    trace_id: str


def _insert_test_rows(
    connection: Connection, decisions: list[dict[str, Any]], spans: list[dict[str, Any]]
) -> None:
    """A model test's policy decisions and spans, in the caller's transaction."""
    if decisions:
        insert_decisions(connection, decisions)
    if spans:
        connection.execute(insert(SpanRow), spans)


class Platform:
    """Store, gateways, runtime and tracing for one process.

    Args:
        settings: Settings to build from.
        providers: Extra model providers by name (e.g. ``{"scripted": ScriptedModel(...)}``);
            they replace configured providers of the same name.
        start_local_model: Start the embedded model (``local`` provider) in :meth:`start`.
        migrate: Apply pending migrations in :meth:`start` (the embedded mode); otherwise refuse
            an unmigrated database.
        builtins: Extra builtin tools (implementation and ``Tool`` document), registered in
            :meth:`start` next to Corral's own.

    Building one makes Corral's files private first (:func:`corral._files.make_home_private`:
    umask 0o077, ``CORRAL_HOME`` 0700, database and logs 0600) and creates the default
    tenant's workspace root, ``{home}/workspaces/default/``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        providers: Mapping[str, ModelProvider] | None = None,
        start_local_model: bool = False,
        migrate: bool = True,
        builtins: Mapping[str, BuiltinTool] | None = None,
    ) -> None:
        self.settings = settings
        make_home_private(settings.home, database=settings.sqlite_path)
        self.workspaces = Workspaces(settings)
        self.workspaces.ensure_builtin_root(DEFAULT_TENANT)
        if settings.mcp_endpoint.workspace is not None:
            # Canonical, as a run's is: the fs tools refuse a workspace whose path changed.
            settings.mcp_endpoint.workspace = self.workspaces.check_endpoint_workspace(
                settings.mcp_endpoint.workspace
            )
        self.store = Store.from_settings(settings)
        self.tracing = Tracing()
        self.metric_export = otlp_metric_exporter(self.tracing.provider.resource)
        """Pushes the metrics to the OTLP collector when one is configured (started by
        :meth:`start`, flushed by :meth:`close`)."""
        # Approval decisions record the waiting run's approval.wait span with this tracing.
        install_approval_effects(RunApprovalEffects(self.tracing))
        self._extra_providers = dict(providers or {})
        self._start_local_model = start_local_model
        self._migrate = migrate
        self._unregister_breakers: Callable[[], None] = lambda: None
        self._readiness_lock = asyncio.Lock()
        self._readiness: tuple[float, Readiness] | None = None
        self._redis_clients = RedisClients()
        """The readiness check's Redis clients: made on the first check, closed in close()."""
        self.local_server: LocalModelServer | None = None
        self.governance = Governance(
            self.store,
            roles=settings.governance.roles,
            refresh_seconds=settings.governance.policy_refresh_seconds,
            record_span=functools.partial(record_child_span, self.tracing.tracer),
        )
        self.identity = Identity(self.store, settings.identity, home=settings.home)
        self.quotas = Quotas(self.store, settings.quotas, model_usage=daily_model_usage)
        self.secrets = SecretBroker(self.store, settings, governance=self.governance)
        gateway = settings.models
        self.model_catalog = ModelCatalog(
            self._tenant_models,
            defaults=default_models(gateway.defaults),
            ttl_seconds=gateway.cache_seconds,
        )
        self.models = ModelGateway(
            {},
            self.tracing.tracer,
            catalog=self.model_catalog,
            region=settings.region,
            breakers=CircuitBreakers(
                gateway.breaker_failure_threshold,
                gateway.breaker_reset_seconds,
                storage_url=gateway.breaker_storage_url,
                namespace="models",
            ),
            retry=RetryPolicy(
                gateway.retry_initial_seconds,
                gateway.retry_max_seconds,
                gateway.max_retry_after_seconds,
            ),
            secrets=self._render_secret,
        )
        self.models.cache = StoreResponseCache(self.store)
        self.tools = ToolGateway(
            settings.tools, self.tracing.tracer, builtins=builtins, secrets=self.secrets
        )
        self.tools.mcp = cast("McpExecutor", _McpOnDemand(self))
        self.tools.result_cache = StoreToolResultCache(self.store)
        # Replayed runs: recorded model outputs (model ``replay/RUN``) and recorded tool results.
        recordings = Recordings(self.store)
        self.models.providers[REPLAY_PROVIDER] = ReplayModel(recordings)
        self.tools.interceptor = ReplayTools(recordings)
        self.executor = RunExecutor(
            self.store,
            self.models,
            self.tools,
            self.tracing,
            lease=timedelta(seconds=settings.runtime.lease_seconds),
            governance=self.governance,
            approval_ttl=timedelta(seconds=settings.governance.approval_ttl_seconds),
            quotas=self.quotas,
        )
        self.worker = Worker(
            self.store,
            self.executor,
            concurrency=settings.runtime.worker_concurrency,
            poll_interval=timedelta(seconds=settings.runtime.poll_interval_seconds),
            lease=timedelta(seconds=settings.runtime.lease_seconds),
            signal_poll=timedelta(seconds=settings.runtime.signal_poll_seconds),
            store_retry_initial=timedelta(seconds=settings.runtime.store_retry_initial_seconds),
            store_retry_max=timedelta(seconds=settings.runtime.store_retry_max_seconds),
        )
        # Experiments' stop rule and rollout steps.
        self.worker.add_heartbeat_job(
            timedelta(seconds=settings.releases.heartbeat_seconds),
            lambda: self.evaluate_releases(self.worker.clock()),
        )
        self.slo = SloEvaluator(self.store, settings.alerts, holder=self.worker.worker_id)
        self.success_source = FeedbackSuccess()
        """What experiments and rollouts count as a success: users' ratings count, so a
        disliked answer is no success (heartbeat decisions and the status routes alike)."""
        self.worker.add_heartbeat_job(self.slo.interval, self.slo.tick)

    async def evaluate_releases(self, now: datetime) -> None:
        """Apply experiments' stop rule and move rollouts along (a worker heartbeat task)."""
        await evaluate_releases(
            self.store,
            self.governance,
            now,
            stages=self.settings.governance.stages,
            source=self.success_source,
            evals=latest_eval,
        )

    async def start(self) -> None:
        """Migrate (or check), register builtin tools, start providers.

        Raises:
            CorralError: ``store_not_migrated`` when ``migrate=False`` and the database is behind;
                ``store_pool_too_large`` when the pools of ``store.processes`` processes cannot
                fit PostgreSQL's ``max_connections``.
        """
        await check_pool_capacity(self.store, processes=self.settings.store.processes)
        if self._migrate:
            await upgrade(self.store)
        else:
            await ensure_migrated(self.store)
        async with self.store.read(SYSTEM) as session:
            tenants = list(await session.scalars(select(TenantRow.id)))
        for tenant_id in tenants:
            await self.register_builtin_tools(tenant_id)
        self.models.providers.update(await self._build_providers())
        self._unregister_breakers = register_breakers(self._breaker_states)
        if self.metric_export is not None:
            self.metric_export.start()

    def _breaker_states(self) -> Iterator[tuple[str, str, str]]:
        """``(kind, name, state)`` of this platform's model and tool breakers (for metrics).

        A model breaker is named ``provider|scheme://host:port|model``: a deployment's
        ``base_url`` may carry credentials or a path, which a metric label must not.
        """
        for key, state in self.models.breakers.snapshot().items():
            provider, _, rest = key.partition("|")
            base_url, _, model = rest.rpartition("|")
            parts = urlsplit(base_url)
            port = f":{parts.port}" if parts.port else ""
            origin = f"{parts.scheme}://{parts.hostname}{port}" if parts.hostname else ""
            yield "model", f"{provider}|{origin}|{model}", state
        for upstream, state in self.tools.resilience.breakers.snapshot().items():
            yield "tool", upstream, state

    async def refresh_metrics(self) -> None:
        """Update the metrics computed at scrape time (the run queue depth: one count)."""
        set_queue_depth(await count_queued_runs(self.store))

    async def readiness(self) -> Readiness:
        """Whether this process can serve: the checks of ``GET /readyz`` and ``corral status``.

        See :mod:`corral.observability` (``_health``) for what each check means; every
        ``detail`` is safe to show without credentials. An answer younger than
        ``health.cache_seconds`` is reused, and concurrent callers share one run of the checks.
        """
        async with self._readiness_lock:
            cached = self._readiness
            max_age = self.settings.health.cache_seconds
            if cached is None or time.monotonic() - cached[0] >= max_age:
                cached = self._readiness = (time.monotonic(), await self._run_readiness())
        return cached[1]

    async def _run_readiness(self) -> Readiness:
        settings = self.settings

        async def store() -> list[Check]:
            return await check_store(self.store)

        async def redis() -> list[Check]:
            return await check_redis(
                {
                    "CORRAL_TOOLS__RATE_LIMIT_STORAGE_URL": settings.tools.rate_limit_storage_url,
                    "CORRAL_IDENTITY__RATE_LIMIT_STORAGE_URL": (
                        settings.identity.rate_limit_storage_url
                    ),
                },
                clients=self._redis_clients,
            )

        async def local() -> list[Check]:
            return [await self._check_local_model()]

        async def local_checks() -> list[Check]:
            return [
                check_disk(settings.home, min_free_mb=settings.health.min_free_disk_mb),
                self._check_master_key(),
                self._check_mcp_upstreams(),
            ]

        return await run_probes(
            [
                Probe(("store", "migrations"), store),
                Probe(("local_model",), local),
                Probe(("redis",), redis),
                Probe(("disk", "master_key", "mcp_upstreams"), local_checks),
            ],
            timeout_seconds=settings.health.check_timeout_seconds,
        )

    async def _check_local_model(self) -> Check:
        """``local_model``: the embedded model server answers ``GET /v1/models``."""
        if not (self._start_local_model and self.settings.local_model.enabled):
            return Check("local_model", "skipped", "this process does not run the embedded model")
        if "local" in self._extra_providers:
            return Check("local_model", "skipped", "the local provider is replaced")
        server = self.local_server
        if server is None:
            return Check(
                "local_model",
                "fail",
                "the embedded model did not start; see the local-model log under "
                "CORRAL_HOME/logs, or start Corral with --no-local-model",
            )
        import httpx  # only where the embedded model runs

        headers = {"Authorization": f"Bearer {server.api_key}"}
        async with httpx.AsyncClient(headers=headers) as client:
            try:
                response = await client.get(f"{server.base_url}/models")
            except httpx.HTTPError as exc:
                response = None
                why = type(exc).__name__
        if response is not None and response.status_code == 200:
            return Check("local_model", "ok", "the embedded model answers")
        if response is not None:
            why = f"HTTP {response.status_code}"
        return Check(
            "local_model",
            "fail",
            f"the embedded model server does not answer ({why}); restart Corral, and see the "
            "local-model log under CORRAL_HOME/logs",
        )

    def _check_master_key(self) -> Check:
        """``master_key``: the secrets master key is configured (or can be, in embedded mode)."""
        settings = self.settings
        if settings.secrets.master_key is None and not (settings.home / KEY_FILE_NAME).exists():
            if settings.sqlite_path is not None:
                return Check(
                    "master_key",
                    "ok",
                    "the embedded store's key is generated under CORRAL_HOME at the first secret",
                )
            return Check(
                "master_key",
                "fail",
                "no secrets master key: set CORRAL_SECRETS__MASTER_KEY to the base64 of 32 "
                "random bytes, the same for every API replica and worker",
            )
        try:
            _ = self.secrets.master_key
        except CorralError as exc:
            return Check(
                "master_key",
                "fail",
                f"the secrets master key cannot be used ({exc.code}): fix "
                "CORRAL_SECRETS__MASTER_KEY, or the key file's content or mode (0600)",
            )
        return Check("master_key", "ok", "the secrets master key is loaded")

    def _check_mcp_upstreams(self) -> Check:
        """``mcp_upstreams``: the MCP servers' breakers as last seen here (none is called)."""
        states = [
            state
            for upstream, state in self.tools.resilience.breakers.snapshot().items()
            if upstream.startswith("mcp:")
        ]
        open_ = sum(state != "closed" for state in states)
        if not open_:
            return Check(
                "mcp_upstreams", "ok", f"no open circuit breaker ({len(states)} upstream(s) seen)"
            )
        return Check(
            "mcp_upstreams",
            "warn",
            f"{open_} of {len(states)} MCP upstream(s) seen failing have an open circuit "
            "breaker; `corral mcp` lists the servers, their logs are under CORRAL_HOME/logs",
        )

    async def ensure_local_admin(self) -> Path:
        """Make ``{home}/admin.key`` hold a working key of ``user:local-admin`` (mode 0600).

        A key already there that still authenticates is kept; otherwise a new one replaces it
        (and the old key row). Returns the file's path.
        """
        path = self.settings.home / ADMIN_KEY_FILE
        if path.exists():
            try:
                principal = await self.identity.authenticate(f"Bearer {path.read_text().strip()}")
            except CorralError:
                principal = None
            if principal is not None and principal.id == "user:local-admin":
                return path
        key = await create_local_admin_key(
            self.store, server_secret=self.identity.server_secret, tenant_id=DEFAULT_TENANT
        )
        write_private_file(path, key + "\n", replace=True)
        return path

    async def register_builtin_tools(self, tenant_id: str = DEFAULT_TENANT) -> None:
        """Apply the builtin tools' documents (a no-op when they are unchanged)."""
        async with self.store.transaction(tenant_id) as session:
            await apply_documents(
                session,
                [tool.contract for tool in self.tools.builtins.values()],
                tenant_id=tenant_id,
                actor="system",
            )

    async def _build_providers(self) -> dict[str, ModelProvider]:
        providers: dict[str, ModelProvider] = {}
        openai_settings = self.settings.openai
        if openai_settings.base_url or openai_settings.api_key:
            # Imported only when configured: the openai SDK is ~500 modules, ~40 MB.
            from corral.gateway.models import OpenAICompatibleProvider

            try:
                providers["openai"] = OpenAICompatibleProvider.from_settings(openai_settings)
            except ModelAPIError as exc:
                providers["openai"] = UnavailableProvider("openai", exc.message)
        if self._start_local_model and "local" not in self._extra_providers:
            providers["local"] = await self._start_local()
        elif "local" not in self._extra_providers:
            providers["local"] = UnavailableProvider(
                "local",
                "the embedded model is not running in this process; start Corral with "
                "`corral up` (without --no-local-model)",
            )
        providers.update(self._extra_providers)
        return providers

    async def _start_local(self) -> ModelProvider:
        server = LocalModelServer(self.settings.local_model, log_dir=self.settings.home / "logs")
        try:
            await server.start()
        except LocalModelUnavailable as exc:
            log.warning("embedded model unavailable: %s", exc.message)
            return UnavailableProvider("local", exc.message)
        self.local_server = server
        return local_provider(server.base_url, self.settings.local_model, api_key=server.api_key)

    @functools.cached_property
    def mcp(self) -> McpPool:
        """Sessions with upstream MCP servers, built on first use (with the MCP SDK)."""
        from corral.gateway.mcp import McpPool

        return McpPool(render=self._render_secret, log_dir=self.settings.home / "logs")

    @functools.cached_property
    def mcp_executor(self) -> McpExecutor:
        """The tool gateway's executor of ``mcp`` tools, built on the first call of one."""
        from corral.gateway.mcp import McpExecutor

        return McpExecutor(self.store, self.mcp)

    async def test_model(
        self,
        alias: str,
        *,
        tenant_id: str,
        principal: str,
        roles: frozenset[str] = frozenset(),
        prompt: str = "Reply with one word: ok",
    ) -> ModelTest:
        """Make one small call to a model alias, as ``principal``, through the whole gateway.

        ``model.call`` is decided for each deployment the gateway reaches (with its region),
        and the decisions are stored.

        Args:
            alias: An alias or ``provider/model`` name.
            tenant_id: The tenant whose aliases apply.
            principal: Who asks (``user:...`` or ``service:...``): the policy principal.
            roles: Its roles in the tenant.
            prompt: The user message sent.

        Returns:
            The deployment that answered, the response and the latency.

        Raises:
            NotFound: an unknown alias (naming the known ones).
            ModelAPIError: no deployment answered (naming each).
            PolicyDenied: policy refused every deployment.
        """
        rows: list[dict[str, Any]] = []
        caller = self.governance.principal_entity(principal, tenant_id, roles=roles)

        async def authorize(model: str, served: Served | None = None) -> str | None:
            provider, _, name = model.partition("/")
            request = PolicyRequest(
                principal=principal_ref(principal),
                action="model.call",
                resource=EntityRef("Model", model),
                context=PolicyContext(
                    tenant=tenant_id,
                    stage="dev",
                    requester=principal,
                    region=None if served is None else served.region,
                    deployment=None if served is None else served.deployment,
                ),
            )
            model_entity = Entity(EntityRef("Model", model), {"provider": provider, "name": name})
            decision = await self.governance.decide(tenant_id, request, [caller, model_entity])
            rows.append(decision_row(decision, request, tenant_id=tenant_id, run_id=None))
            if decision.decision == "allow":
                return None
            return (
                f"policy does not allow model {model!r} for {principal!r}: "
                f"{'; '.join(decision.reasons) or 'no policy permits it'} (decision {decision.id})"
            )

        request = ModelRequest(model="", messages=[Message("user", prompt)], max_output_tokens=16)
        trace_id = new_trace_id()
        started = time.perf_counter()
        try:
            with Tracing.trace(trace_id):
                model, response = await self.models.complete(
                    [alias], request, authorize=authorize, tenant_id=tenant_id
                )
        finally:
            # The spans are stored (and leave the exporter) whether the call answered or not.
            spans = self.tracing.exporter.drain(trace_id, tenant_id=tenant_id, run_id=None)
            if rows or spans:
                async with self.store.transaction(tenant_id) as session:
                    await session.run_sync(
                        lambda sync: _insert_test_rows(sync.connection(), rows, spans)
                    )
        return ModelTest(model, response, (time.perf_counter() - started) * 1000, trace_id)

    async def _tenant_models(self, tenant_id: str) -> dict[str, ModelSpec]:
        """A tenant's ``Model`` specs by alias (the model catalog's loader)."""
        async with self.store.read(tenant_id) as session:
            found = await tenant_models(session, tenant_id=tenant_id)
        return {alias: model.spec for alias, model in found.items()}

    async def _render_secret(self, tenant_id: str, template: str) -> str:
        """Resolve ``${secret:NAME}`` references for an MCP server's ``env`` or ``headers``."""
        rendered, _ = await self.secrets.render(tenant_id, template)
        return rendered

    async def close(self) -> None:
        """Stop MCP sessions, HTTP tool pools, the embedded model; close providers and store.

        The audit sequencer's pending passes run before the store closes, so every audit event
        this process appended is chained (:func:`corral.audit.settle_chains`).

        Spans queued for OTLP export, and the metrics' final values when OTLP metric export is
        on, are flushed last (in a thread: the export is blocking).
        """
        self._unregister_breakers()
        if "mcp" in self.__dict__:  # never built: no MCP server was used
            await self.mcp.close()
        await self.tools.aclose()
        await self.slo.aclose()
        self._redis_clients.close()
        if self.local_server is not None:
            await self.local_server.stop()
        for provider in [*self.models.providers.values(), *self.models.deployment_providers]:
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()
        # Audit events appended unchained (their head was held) are chained before the pool goes.
        await settle_chains(self.store.engine)
        await self.store.dispose()
        if self.metric_export is not None:
            await asyncio.to_thread(self.metric_export.shutdown)
        if self.tracing.otlp is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        else:
            self.tracing.shutdown()
