"""The tool-result cache: reuse a read-only tool's result for the same call, for a while.

Only tools with ``side_effect: read`` may declare ``spec.cache_ttl_seconds`` (the contract
refuses it elsewhere), and only ``COMPLETED`` results are cached. The pipeline looks the cache
up *after* the call was decided by policy (and approved, when policy asks for it) and after the
recorder's checks before execution: a hit still has its ``tool.call`` decision, audit event and
span; it only skips credentials and execution.

The key (:func:`tool_cache_digest`) is the SHA-256 of the canonical JSON of:

- the tenant (also a column of the entry: a tenant never reads another's entries);
- the calling principal (the agent's name for a managed run, the authenticated principal for a
  direct call): a read-only tool's result can depend on who calls it, through the credentials
  the gateway injects for that caller or the entries its policy lets a listing show, so two
  agents never share a result;
- the tool's name and version (a new version is a new tool);
- the canonical arguments (validated, ``path`` resolved against the workspace, so ``./a``
  and ``a`` are one entry) and the workspace;
- the digest of the policy set that decided the call: a policy change can hide entries a
  directory listing showed, so results cached under the previous policies stop matching.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta
from typing import Any, Protocol

from corral.audit import canonical_json
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import PreparedCall

__all__ = ["ToolResultCache", "result_document", "result_from_document", "tool_cache_digest"]

_KEY_VERSION = 1
"""Part of every key: bump it when the entry format changes, so old entries stop matching."""


class ToolResultCache(Protocol):
    """Where cached tool results live (implemented over the store by ``corral.cache``)."""

    async def get(self, tenant_id: str, digest: str) -> ToolResult | None:
        """The tenant's live result under ``digest``, or ``None`` (absent or expired)."""
        ...

    async def put(
        self, tenant_id: str, digest: str, result: ToolResult, *, tool: str, ttl: timedelta
    ) -> None:
        """Store ``result`` of ``tool`` for ``ttl`` from now, replacing any under ``digest``."""
        ...


def tool_cache_digest(
    ctx: ToolCallContext, prepared: PreparedCall, *, caller: str, policy_set: str | None
) -> str:
    """The cache key of one decided call (see the module for what it covers and why).

    Args:
        ctx: The call's context (tenant, workspace).
        prepared: The validated, canonicalised call.
        caller: Who calls: the agent's name, or the principal of a direct call.
        policy_set: Digest of the policy set that decided the call (``None``: undecided).

    Returns:
        64 hex digits.
    """
    document = {
        "v": _KEY_VERSION,
        "tenant": ctx.tenant_id,
        "caller": caller,
        "tool": prepared.tool.name,
        "version": prepared.tool.version,
        # The canonical path, not as given: ``./a`` and ``a`` are one entry.
        "arguments": (
            {**prepared.arguments, "path": prepared.path}
            if "path" in prepared.arguments
            else prepared.arguments
        ),
        "path": prepared.path,
        "workspace": None if ctx.workspace is None else str(ctx.workspace),
        "policy_set": policy_set,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


def result_document(result: ToolResult) -> dict[str, Any]:
    """``result`` as a JSON object (the stored form)."""
    return dataclasses.asdict(result)


def result_from_document(document: dict[str, Any]) -> ToolResult:
    """The result :func:`result_document` stored."""
    return ToolResult(**document)
