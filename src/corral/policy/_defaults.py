"""Corral's default policy set, as Cedar text.

What it decides (everything else is denied by default, including ``memory.read``,
``memory.write``, ``approval.decide`` and ``secret.use`` until a tenant adds a permit):

* ``tenant-boundary``: a principal acts only in its own tenant (``principal.tenant`` and, when
  the resource has one, ``resource.tenant`` must equal ``context.tenant``). A deny-forbid, so
  no permit a tenant adds can cross it.
* Tools, by the tool's ``side_effect``:

  * ``read``: allowed within the tenant;
  * ``write``: allowed within the tenant; outside stages ``dev`` and ``eval-sandbox`` (an eval
    run in a sandbox the suite provides) it needs one approval from role ``approver``;
  * ``write`` and ``destructive`` are denied in stage ``eval`` (an eval run without a sandbox:
    ``tool-side-effect-in-eval``);
  * ``destructive``: denied unless *explicitly permitted*, and then it needs one approval
    from role ``approver`` in every stage. Explicitly permitted means the caller sets
    ``context.destructive_allowed``; the runtime does that only when the agent's contract names
    the tool in ``tools.allowed`` itself (a wildcard such as ``fs.*`` never counts). Cedar
    cannot let a later ``permit`` override a ``forbid``, so the exception has to be data the
    forbid reads (its ``unless`` clause).
  * in stage ``shadow`` (a rollout's candidate on a copy of live tasks), every tool that is
    not read-only is denied (``tool-shadow-read-only``).

* ``agent.invoke``: allowed within the tenant, denied for a ``retired`` agent.
* ``model.call``: allowed (which models an agent may use is its contract's business).
* ``agent.promote``: allowed within the tenant to principals with role ``builder``,
  ``operator`` or ``admin``; to stage ``production`` it needs two approvals from role
  ``platform-admin`` (``context.stage`` is the stage promoted to). Other stages, such as
  ``staging``, need none.
"""

from __future__ import annotations

from typing import Final

from corral.policy._types import PolicySource

__all__ = ["DEFAULT_POLICIES", "DEFAULT_POLICY_TEXT"]

DEFAULT_POLICY_TEXT: Final = """\
@id("tenant-boundary")
@reason("Principals act only inside their own tenant.")
forbid (principal, action, resource)
when {
  principal.tenant != context.tenant ||
  (resource has tenant && resource.tenant != context.tenant)
};

@id("tool-read-in-tenant")
@reason("Read-only tools may be called within the tenant.")
permit (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "read" && principal.tenant == resource.tenant };

@id("tool-write-in-tenant")
@reason("Tools with side effects may be called within the tenant, subject to approval.")
permit (principal, action == Action::"tool.call", resource)
when {
  ["write", "destructive"].contains(resource.side_effect) &&
  principal.tenant == resource.tenant
};

@id("tool-write-needs-approval")
@decision("require_approval")
@approver_role("approver")
@reason("A write tool outside dev (and an eval's sandbox) needs an approver's approval.")
forbid (principal, action == Action::"tool.call", resource)
when {
  resource.side_effect == "write" && context.stage != "dev" && context.stage != "eval-sandbox"
};

@id("tool-side-effect-in-eval")
@reason("An eval run without a sandbox may not call tools with side effects.")
forbid (principal, action == Action::"tool.call", resource)
when { context.stage == "eval" && resource.side_effect != "read" };

@id("tool-destructive-not-allowed")
@reason("A destructive tool is denied unless the agent's contract names it explicitly.")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "destructive" }
unless { context.destructive_allowed };

@id("tool-destructive-needs-approval")
@decision("require_approval")
@approver_role("approver")
@reason("A destructive tool needs an approver's approval in every stage.")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect == "destructive" };

@id("tool-shadow-read-only")
@reason("A shadow run (a candidate on a copy of live tasks) may call read-only tools only.")
forbid (principal, action == Action::"tool.call", resource)
when { resource.side_effect != "read" && context.stage == "shadow" };

@id("agent-invoke-in-tenant")
@reason("Agents may be invoked within their tenant.")
permit (principal, action == Action::"agent.invoke", resource)
when { principal.tenant == resource.tenant };

@id("agent-invoke-retired")
@reason("A retired agent cannot run.")
forbid (principal, action == Action::"agent.invoke", resource)
when { resource.status == "retired" };

@id("model-call")
@reason("Models may be called.")
permit (principal, action == Action::"model.call", resource);

@id("agent-promote-in-tenant")
@reason("Builders, operators and admins may promote agents within their tenant.")
permit (principal, action == Action::"agent.promote", resource)
when {
  principal.tenant == resource.tenant &&
  principal.roles.containsAny(["builder", "operator", "admin"])
};

@id("agent-promote-production-approval")
@decision("require_approval")
@approver_role("platform-admin")
@required_approvals("2")
@reason("Promotion to production needs two platform-admin approvals.")
forbid (principal, action == Action::"agent.promote", resource)
when { context.stage == "production" };
"""

DEFAULT_POLICIES: Final[tuple[PolicySource, ...]] = (
    PolicySource(id="corral/defaults", text=DEFAULT_POLICY_TEXT),
)
"""The default policy set: one source, each policy named by its ``@id``."""
