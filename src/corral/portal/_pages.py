"""The portal's page list: one entry per top-level page, shown to principals allowed to read it.

To add a page (Agents, Tools, Policies, Audit, Tenants...): write its routes in a module of
this package on ``router`` (``corral.portal._routes``), its template under ``templates/``, and
add a :class:`NavPage` here with the permission its REST twin requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.tenancy import Principal

__all__ = ["PAGES", "NavPage", "visible_pages"]


@dataclass(frozen=True)
class NavPage:
    """A top-level page.

    Attributes:
        title: Its name in the navigation.
        path: Its path under ``/ui`` (``""`` for the overview).
        permission: The permission needed to see it (the REST route's).
    """

    title: str
    path: str
    permission: str


PAGES: tuple[NavPage, ...] = (
    NavPage("Overview", "", "runs.read"),
    NavPage("Runs", "/runs", "runs.read"),
    NavPage("Approvals", "/approvals", "approvals.read"),
    NavPage("Agents", "/agents", "agents.read"),
    NavPage("Tools", "/tools", "tools.read"),
    NavPage("Policies", "/policies", "policies.read"),
    NavPage("Audit", "/audit", "audit.read"),
    NavPage("Tenant", "/tenancy", "keys.manage"),
)


def visible_pages(principal: Principal) -> list[NavPage]:
    """The pages ``principal`` may open, in navigation order."""
    return [page for page in PAGES if principal.can(page.permission)]
