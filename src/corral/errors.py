"""Corral's one error tree.

Every error Corral raises on purpose derives from :class:`CorralError`. Only ``corral.api`` maps
these to HTTP status codes (one table in ``corral/api/_errors.py``); the CLI maps them to
exit codes.

```
CorralError
├── InvalidContract        a YAML/JSON contract failed validation (file, field path, line)
├── InvalidRequest         a request is well-formed but cannot be honoured as asked
│   └── ModelPriceUnknown  a model has no price (names the override to add)
├── NotFound               an object does not exist (in this tenant)
├── Conflict               the request contradicts stored state (e.g. a version reused)
├── Unauthorized           no credentials, or credentials that do not verify (HTTP 401)
├── Forbidden              the principal lacks the permission, or its tenant is suspended
├── QuotaExceeded          a tenant quota or an API rate limit is used up (HTTP 429)
├── PolicyDenied           a governed action was refused
│   ├── PolicyRefused      ... by a policy decision (stored after the rollback)
│   └── KillSwitchEngaged  an agent, tenant or platform kill switch stops new runs
├── BudgetExceeded         a run hit one of its limits, or a cost budget would be exceeded
├── LeaseLost              a worker's lease on a run was taken over; its writes are refused
├── MissingTenantScope     a query without a tenant scope (a programming error; also a
│                          RuntimeError)
├── ToolFailed             a tool call failed; recorded in the step, the run goes on
│   ├── PathOutsideWorkspace
│   ├── DestinationRefused an outbound request to a private/loopback/link-local address (SSRF)
│   ├── UpstreamFailed     an HTTP API or MCP server failed (names it; may be retryable)
│   ├── CircuitOpen        an upstream's circuit breaker is open: the call fails fast
│   └── RateLimited        a per-tool, per-agent or per-tenant rate limit is exhausted
├── ModelAPIError          a model provider failed or returned garbage
└── LocalModelUnavailable  the embedded model runtime is missing or did not start
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BudgetExceeded",
    "CircuitOpen",
    "Conflict",
    "ContractIssue",
    "CorralError",
    "DestinationRefused",
    "Forbidden",
    "InvalidContract",
    "InvalidRequest",
    "KillSwitchEngaged",
    "LeaseLost",
    "LocalModelUnavailable",
    "MissingTenantScope",
    "ModelAPIError",
    "ModelPriceUnknown",
    "NotFound",
    "PathOutsideWorkspace",
    "PolicyDenied",
    "PolicyRefused",
    "QuotaExceeded",
    "RateLimited",
    "ToolFailed",
    "Unauthorized",
    "UpstreamFailed",
]


class CorralError(Exception):
    """Base of every error Corral raises on purpose.

    Args:
        message: What went wrong and how to fix it, for a person.
        code: A stable machine-readable code (snake_case), e.g. ``"agent_not_found"``.
    """

    default_code = "corral_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of this error: ``{"code": str, "message": str, ...extra}``."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ContractIssue:
    """One problem in a contract document.

    Attributes:
        file: Path of the file (or ``"<request>"`` for an API body).
        document: Zero-based index of the YAML document within the file.
        path: Field path, dotted (``spec.limits.max_iterations``).
        line: One-based line number in the file, or ``None`` when unknown.
        message: What is wrong with the value.
    """

    file: str
    document: int
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        field = self.path or "<document>"
        return f"{where}: {field}: {self.message}"


class InvalidContract(CorralError):
    """One or more contract documents are invalid; nothing was written."""

    default_code = "invalid_contract"

    def __init__(self, issues: list[ContractIssue]) -> None:
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{len(issues)} problem(s) in contract; nothing was applied:\n{lines}")
        self.issues = issues

    def to_dict(self) -> dict[str, Any]:
        """JSON body with one entry per issue."""
        body = super().to_dict()
        body["issues"] = [issue.__dict__ for issue in self.issues]
        return body


class InvalidRequest(CorralError):
    """The request is well-formed but cannot be honoured as asked."""

    default_code = "invalid_request"


class ModelPriceUnknown(InvalidRequest):
    """A model call cannot be priced: the price table does not know the model, no override.

    Args:
        message: Names the model and the override to add.
        model: The ``provider/model`` name.
    """

    default_code = "model_price_unknown"

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model

    def to_dict(self) -> dict[str, Any]:
        """The error body, with the model's name."""
        return {**super().to_dict(), "model": self.model}


class NotFound(CorralError):
    """An object does not exist (in the caller's tenant).

    Args:
        message: Names the object and lists what does exist where that helps.
        kind: The object's kind (``"agent"``, ``"run"``...).
        name: Its name or id.
        known: Names that do exist, to help the caller.
    """

    default_code = "not_found"

    def __init__(
        self, message: str, *, kind: str, name: str, known: list[str] | None = None
    ) -> None:
        super().__init__(message, code=f"{kind}_not_found")
        self.kind = kind
        self.name = name
        self.known = known or []

    def to_dict(self) -> dict[str, Any]:
        """JSON body with the kind, the name and the known names."""
        return {**super().to_dict(), "kind": self.kind, "name": self.name, "known": self.known}


class Conflict(CorralError):
    """The request contradicts stored state."""

    default_code = "conflict"


class Unauthorized(CorralError):
    """The request carries no credentials, or credentials that do not verify.

    The message says which check failed without echoing the credential.
    """

    default_code = "unauthorized"


class Forbidden(CorralError):
    """The authenticated principal may not do this (a missing permission, a suspended tenant)."""

    default_code = "forbidden"


class QuotaExceeded(CorralError):
    """A tenant quota or a per-principal API rate limit is used up.

    Attributes:
        quota: Its name (``runs_per_day``, ``concurrent_runs``, ``model_tokens_per_day``,
            ``cost_usd_per_day``, ``api_requests``).
        limit: The limit, in the quota's unit.
        current: The value that reached it.
        retry_after_seconds: Seconds until it resets (HTTP ``Retry-After``, RFC 9110 10.2.3).
    """

    default_code = "quota_exceeded"

    def __init__(
        self,
        message: str,
        *,
        quota: str,
        limit: str,
        current: str,
        retry_after_seconds: int,
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.current = current
        self.retry_after_seconds = retry_after_seconds

    def to_dict(self) -> dict[str, Any]:
        """The error body, with the quota, its limit, the current value and the reset delay."""
        return {
            **super().to_dict(),
            "quota": self.quota,
            "limit": self.limit,
            "current": self.current,
            "retry_after_seconds": self.retry_after_seconds,
        }


class PolicyDenied(CorralError):
    """A governed action was refused (tool not allowed, agent retired...)."""

    default_code = "policy_denied"


def _stored(_connection: Any) -> None:
    """Nothing to write: the decision of this refusal was stored by the service."""


class PolicyRefused(PolicyDenied):
    """Policy did not allow a governed action; the decision is stored all the same.

    The transaction that decided rolls back with the refusal; the service that decided stores
    the decision and its audit event afterwards, in a transaction of its own, before the error
    reaches its caller (``corral.runtime.start_run`` does for ``agent.invoke``).

    Args:
        message: Names the action, the policies that decided and their reasons.
        decision_id: The decision's id.
        record: Only for services that still leave the storing to their caller (promotions):
            writes the decision and its audit event, given one store connection. By default it
            writes nothing: the service has stored the decision already.
    """

    default_code = "policy_denied"

    def __init__(
        self, message: str, *, decision_id: str, record: Callable[[Any], None] = _stored
    ) -> None:
        super().__init__(message)
        self.decision_id = decision_id
        self.record = record

    def to_dict(self) -> dict[str, Any]:
        """JSON body with the decision id."""
        return {**super().to_dict(), "policy_decision_id": self.decision_id}


class KillSwitchEngaged(PolicyDenied):
    """A kill switch covers the agent: no new run starts until it is released.

    Args:
        message: Names the switch, who engaged it, why, and how to release it.
        scope: ``agent``, ``tenant`` or ``platform``.
        target: Agent name, tenant id or ``*``.
        engaged_by: Principal that engaged it.
    """

    default_code = "kill_switch_engaged"

    def __init__(self, message: str, *, scope: str, target: str, engaged_by: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.target = target
        self.engaged_by = engaged_by

    def to_dict(self) -> dict[str, Any]:
        """JSON body naming the switch and who engaged it."""
        return {
            **super().to_dict(),
            "scope": self.scope,
            "target": self.target,
            "engaged_by": self.engaged_by,
        }


class BudgetExceeded(CorralError):
    """A run hit one of its limits, or a model call's reservation would exceed a cost budget.

    Args:
        message: Which limit and its value.
        limit: The limit's field name (``max_iterations``, ``max_cost_usd``,
            ``max_cost_usd_per_day``, ``quota:cost_usd_per_day``...).
        limit_usd: A cost budget's limit in US dollars (cost budgets only).
        spent_usd: What the budget's scope has spent and reserved so far, US dollars.
        reservation_usd: The refused call's pessimistic cost estimate, US dollars.
    """

    default_code = "budget_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        limit_usd: str | None = None,
        spent_usd: str | None = None,
        reservation_usd: str | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reservation_usd = reservation_usd

    def to_dict(self) -> dict[str, Any]:
        """The error body, with the budget's name and, for a cost budget, the figures."""
        body = {**super().to_dict(), "limit": self.limit}
        if self.limit_usd is not None:
            body.update(
                limit_usd=self.limit_usd,
                spent_usd=self.spent_usd,
                reservation_usd=self.reservation_usd,
            )
        return body


class LeaseLost(CorralError):
    """A worker's lease on a run was taken over: the worker must stop driving the run.

    Every write a worker makes for a run is conditioned on its lease (``lease_owner`` and
    ``lease_epoch``, the number of the claim) in the same transaction; when the run was claimed
    again since (the lease expired: the worker was paused, starved or partitioned), the write is
    refused and nothing of it is stored. Workers catch it and drop the run; the run's new owner
    carries on from the last checkpoint. It never reaches an API caller.

    Args:
        run_id: The run.
        worker_id: The worker that lost the lease.
        lease_epoch: The epoch it held (``None`` when it never read one).
    """

    default_code = "lease_lost"

    def __init__(self, run_id: str, *, worker_id: str, lease_epoch: int | None) -> None:
        super().__init__(
            f"Worker {worker_id!r} no longer holds run {run_id!r} (its lease epoch "
            f"{lease_epoch} was taken over); it wrote nothing more and stopped driving the run. "
            "If this happens often, raise CORRAL_RUNTIME__LEASE_SECONDS."
        )
        self.run_id = run_id
        self.worker_id = worker_id
        self.lease_epoch = lease_epoch


class MissingTenantScope(CorralError, RuntimeError):
    """A query ran in a session opened without a tenant scope, or wrote another tenant's row.

    A programming error, never the caller's: the store refuses the statement before it runs
    (HTTP 500). It is also a :class:`RuntimeError`, as it was before it joined this tree.
    """

    default_code = "missing_tenant_scope"


class ToolFailed(CorralError):
    """A tool call failed. The error is recorded in the step and shown to the model."""

    default_code = "tool_failed"


class PathOutsideWorkspace(ToolFailed):
    """A path argument resolves outside the run's workspace root (``..``, absolute, symlink)."""

    default_code = "path_outside_workspace"


class DestinationRefused(ToolFailed):
    """An outbound request would reach an address the tool may not reach (SSRF guard).

    Private, loopback, link-local, unspecified, multicast and reserved addresses are refused
    unless the tool's ``http.allow_hosts`` names the host or a network containing the address;
    so are schemes other than ``http`` and ``https``.
    """

    default_code = "destination_refused"


class UpstreamFailed(ToolFailed):
    """An upstream (an HTTP API, an MCP server) failed a tool call.

    Args:
        message: Names the upstream and what failed.
        upstream: The upstream's name (``https://api.example.com:443``, ``mcp:git``).
        retryable: The same request may succeed if repeated (connect errors, timeouts,
            HTTP 429/502/503/504).
        status_code: HTTP status returned by the upstream, if any.
        retry_after_seconds: How long the upstream asked to wait (``Retry-After``), if it did.
    """

    default_code = "upstream_failed"

    def __init__(
        self,
        message: str,
        *,
        upstream: str,
        retryable: bool = False,
        status_code: int | None = None,
        retry_after_seconds: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.upstream = upstream
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds


class CircuitOpen(ToolFailed):
    """An upstream failed too often in a row; calls to it fail fast until its cool-down ends.

    Args:
        message: Names the upstream and when it is tried again.
        upstream: The upstream's name.
        retry_after_seconds: Seconds until the breaker lets a trial call through.
    """

    default_code = "circuit_open"

    def __init__(self, message: str, *, upstream: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.retry_after_seconds = retry_after_seconds


class RateLimited(ToolFailed):
    """A rate limit on tool calls is exhausted.

    Args:
        message: Names the limit (scope, key, rate) and when to retry.
        scope: ``tool``, ``agent`` or ``tenant``.
        limit: The rate in ``limits`` notation (``600/minute``).
        retry_after_seconds: Seconds until the window lets a call through again.
    """

    default_code = "rate_limited"

    def __init__(self, message: str, *, scope: str, limit: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds


class ModelAPIError(CorralError):
    """A model provider call failed.

    Args:
        message: What failed.
        provider: Provider name (``openai``, ``local``...).
        status_code: HTTP status returned by the provider, if any.
        retryable: The same call may succeed if repeated (HTTP 429 or 5xx, a timeout, a
            connection error); set by the provider that raises it. The model gateway retries
            only these, with jitter, before falling back.
        retry_after_seconds: The provider's ``Retry-After``, in seconds, if it sent one.
    """

    default_code = "model_api_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds


class LocalModelUnavailable(CorralError):
    """The embedded model cannot be served (runtime not installed, weights missing, port...)."""

    default_code = "local_model_unavailable"
