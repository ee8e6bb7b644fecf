"""What experiments and rollouts share when they build a status: metrics read and serialised."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from corral.releases._metrics import SuccessSource, VariantMetrics, variant_metrics

__all__ = ["metrics_json", "split_metrics"]


async def split_metrics(
    session: AsyncSession,
    split_id: str,
    *,
    tenant_id: str,
    source: SuccessSource | None = None,
) -> dict[str, VariantMetrics]:
    """Per-variant metrics of one traffic split (an experiment's or a rollout's id).

    Args:
        session: A session in the tenant's scope (or the system scope).
        split_id: The experiment's or rollout's id (its split has the same id).
        tenant_id: The tenant whose runs are read.
        source: What counts as a success (:class:`corral.releases.TerminalSuccess` if ``None``).

    Returns:
        Metrics by variant name; a variant with no runs yet is absent.
    """
    return await session.run_sync(
        lambda sync: variant_metrics(
            sync.connection(), split_id, tenant_id=tenant_id, source=source
        )
    )


def metrics_json(metrics: dict[str, VariantMetrics]) -> dict[str, Any]:
    """Per-variant metrics as JSON-safe values (rates and figures as decimal strings)."""

    def text(value: object) -> str | None:
        return None if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)

    return {
        name: {
            "runs": m.runs,
            "finished": m.finished,
            "errors": m.errors,
            "successes": m.successes,
            "error_rate": text(m.error_rate),
            "success_rate": text(m.success_rate),
            "median_cost_usd": text(m.median_cost_usd),
            "p95_latency_seconds": text(m.p95_latency_seconds),
        }
        for name, m in sorted(metrics.items())
    }
