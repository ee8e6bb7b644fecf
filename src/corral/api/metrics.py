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

from typing import Any

from fastapi import APIRouter, Response

from corral.api._deps import requires
from corral.observability import CONTENT_TYPE, exposition
from corral.tenancy import PUBLIC

__all__ = ["METRICS_PATH", "metrics_router"]

METRICS_PATH = "/metrics"


def metrics_router(*, public: bool) -> APIRouter:
    """The ``/metrics`` route, anyone's when ``public`` else ``metrics.read``'s."""
    router = APIRouter(tags=["observability"])
    permission: Any = requires(PUBLIC if public else "metrics.read")

    @router.get(
        METRICS_PATH,
        dependencies=[permission],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text."}},
    )
    async def metrics() -> Response:
        """Every Corral metric of this process, in the Prometheus text format."""
        return Response(exposition(), media_type=CONTENT_TYPE)

    return router
