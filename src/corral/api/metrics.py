"""Route: ``GET /metrics``, Corral's Prometheus metrics (:data:`corral.observability.REGISTRY`).

Who may scrape it. The numbers are process-wide aggregates over every tenant (no tenant id, run
id, principal or prompt text is ever a label, see :mod:`corral.observability`), but call
volumes, error rates and costs are still operational data, so by default a scrape is
authenticated like any other request: an API key whose principal holds ``metrics.read``
(operators and platform admins), which Prometheus sends with its ``authorization`` scrape
setting. A bind-address or client-address check was not chosen: behind a proxy or in a
container every request comes from the same address, so it would protect nothing while
looking as if it did. ``CORRAL_OBSERVABILITY__METRICS_PUBLIC=true`` serves the route without
credentials, for a Prometheus on a trusted network that cannot hold a key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from corral.api._deps import PlatformDep, requires
from corral.observability import CONTENT_TYPE, negotiated_exposition
from corral.tenancy import PUBLIC

__all__ = ["METRICS_PATH", "metrics_router"]

METRICS_PATH = "/metrics"
_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def metrics_router(*, public: bool) -> APIRouter:
    """The ``/metrics`` route, anyone's when ``public`` else ``metrics.read``'s."""
    router = APIRouter(tags=["observability"])
    permission: Any = requires(PUBLIC if public else "metrics.read")

    @router.get(
        METRICS_PATH,
        dependencies=[permission],
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE: {}, _OPENMETRICS: {}},
                "description": "Prometheus text, or OpenMetrics when asked for.",
            }
        },
    )
    async def metrics(
        platform: PlatformDep, accept: Annotated[str | None, Header()] = None
    ) -> Response:
        """Every Corral metric of this process (of every process in multiprocess mode).

        The Prometheus text format, or OpenMetrics with exemplars (trace ids) when ``Accept``
        asks for ``application/openmetrics-text``.
        """
        await platform.refresh_metrics()
        body, content_type = negotiated_exposition(accept)
        return Response(body, media_type=content_type)

    return router
