"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from corral import __version__
from corral.api import agents, approvals, audit, control, policies, releases, runs
from corral.api._deps import PlatformDep
from corral.api._errors import install_error_handlers
from corral.platform import Platform

__all__ = ["create_app"]


def create_app(platform: Platform, *, run_worker: bool = True) -> FastAPI:
    """Build the API around ``platform``.

    Args:
        platform: Store, gateways and runtime; started and closed with the app's lifespan.
        run_worker: Also run a worker in this process (the embedded mode).
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        stop = asyncio.Event()
        worker = asyncio.create_task(platform.worker.run(stop)) if run_worker else None
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            await platform.close()

    app = FastAPI(
        title="Corral",
        version=__version__,
        description="Build, run, govern and observe LLM agents.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    install_error_handlers(app)
    app.include_router(agents.router)
    app.include_router(runs.router)
    app.include_router(control.router)
    app.include_router(audit.router)
    app.include_router(policies.router)
    app.include_router(releases.router)
    app.include_router(approvals.router)

    @app.get("/healthz", tags=["health"])
    async def healthz(platform: PlatformDep) -> dict[str, object]:
        """Liveness: the store answers and which model providers are configured."""
        async with platform.store.read() as session:
            await session.connection()
        return {
            "status": "ok",
            "store": platform.store.dialect,
            "providers": sorted(platform.models.providers),
        }

    return app
