"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from starlette.routing import Route

from corral import __version__
from corral.api import (
    agents,
    approvals,
    audit,
    control,
    costs,
    evals,
    experiments,
    feedback,
    health,
    mcp_servers,
    models,
    policies,
    prompts,
    releases,
    replays,
    rollouts,
    runs,
    secrets,
    slo,
    tenancy,
)
from corral.api._deps import ApiRateLimiter, annotate_permissions
from corral.api._errors import document_errors, install_error_handlers, status_for
from corral.api._headers import StripHeaderWhitespace
from corral.api._limits import RequestSizeLimit
from corral.api._text import reject_lone_surrogates
from corral.api.metrics import metrics_router
from corral.api.openai_compat import OpenAICompatEndpoint
from corral.platform import Platform
from corral.portal import mount_portal

if TYPE_CHECKING:
    from corral.api.mcp import McpEndpoint

__all__ = ["create_app"]


def create_app(
    platform: Platform, *, run_worker: bool = True, local_admin: bool = False
) -> FastAPI:
    """Build the API around ``platform``.

    Args:
        platform: Store, gateways and runtime; started and closed with the app's lifespan.
        run_worker: Also run a worker in this process (the embedded mode).
        local_admin: Make sure ``$CORRAL_HOME/admin.key`` holds a working key of the local
            admin (every role), which the CLI uses when ``CORRAL_API_KEY`` is not set (the
            embedded mode).
    """
    mcp = _mcp_endpoint(platform)
    openai_compat = OpenAICompatEndpoint(platform)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if local_admin:
            await platform.ensure_local_admin()
        stop = asyncio.Event()
        worker = asyncio.create_task(platform.worker.run(stop)) if run_worker else None
        try:
            async with mcp.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            await openai_compat.aclose()
            await platform.close()

    app = FastAPI(
        title="Corral",
        version=__version__,
        description="Build, run, govern and observe LLM agents.",
        lifespan=lifespan,
        dependencies=[Depends(reject_lone_surrogates)],
    )
    app.state.platform = platform
    app.state.openai_compat = openai_compat
    identity = platform.settings.identity
    app.state.rate_limiter = ApiRateLimiter(
        identity.api_rate_limit, identity.rate_limit_storage_url
    )
    app.add_middleware(StripHeaderWhitespace)  # inside the size limit, which counts raw bytes
    app.add_middleware(
        RequestSizeLimit,
        max_body_bytes=identity.max_body_bytes,
        max_header_bytes=identity.max_header_bytes,
    )
    install_error_handlers(app)
    app.include_router(agents.router)
    app.include_router(runs.router)
    app.include_router(control.router)
    app.include_router(audit.router)
    app.include_router(policies.router)
    app.include_router(releases.router)
    app.include_router(experiments.router)
    app.include_router(rollouts.router)
    app.include_router(approvals.router)
    app.include_router(mcp_servers.router)
    app.include_router(models.router)
    app.include_router(secrets.router)
    app.include_router(tenancy.router)
    # OpenAI's wire format and error shape; authenticates itself (Bearer, models.call). First
    # in the route table: the hottest path of a BYO agent is matched without scanning the rest.
    app.router.routes[:0] = openai_compat.routes
    app.include_router(costs.router)
    app.include_router(slo.router)
    app.include_router(prompts.router)
    app.include_router(feedback.router)
    app.include_router(replays.router)
    app.include_router(health.router)
    app.include_router(evals.router)
    app.include_router(metrics_router(public=platform.settings.observability.metrics_public))
    if mcp is not None:  # authenticates itself (Bearer, permission mcp.call): see api/mcp.py
        from corral.api.mcp import MCP_PATH

        # Next to the OpenAI routes, for the same reason: matched before the ~70 routes of the
        # included routers, whose matching cost more CPU than the rest of the HTTP stack.
        app.router.routes.insert(
            len(openai_compat.routes),
            Route(MCP_PATH, mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False),
        )

    mount_portal(app, status_for=status_for)  # /ui: server-rendered pages over the same services
    annotate_permissions(app)
    _document(app)
    return app


def _mcp_endpoint(platform: Platform) -> McpEndpoint | None:
    """The ``/mcp`` endpoint; ``None`` when disabled (then the MCP server SDK is not imported)."""
    if not platform.settings.mcp_endpoint.enabled:
        return None
    from corral.api.mcp import McpEndpoint

    return McpEndpoint(platform)


_EXTRA_ERRORS: dict[tuple[str, str], set[int]] = {
    ("post", "/v1/agents/{name}/runs"): {423},
    ("post", "/v1/mcp-servers/{name}/sync"): {502},
    ("put", "/v1/secrets/{name}"): {503},
    ("delete", "/v1/secrets/{name}"): {503},
    ("get", "/v1/secrets"): {503},
    ("get", "/v1/evals/compare"): {404},  # an agent, version or eval missing
}
"""Statuses beyond the common ones (see ``corral.api._errors.document_errors``)."""


def _document(app: FastAPI) -> None:
    """Make ``/openapi.json`` declare bearer auth and every route's error responses."""
    generate = app.openapi
    documented: set[int] = set()

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI until the routes change
        if id(schema) not in documented:
            documented.clear()
            documented.add(id(schema))
            document_errors(schema, extra=_EXTRA_ERRORS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
