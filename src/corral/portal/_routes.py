"""The portal's router: every page module adds its routes to it."""

from __future__ import annotations

from fastapi import APIRouter

from corral.portal._web import PORTAL_PATH, PortalRoute

__all__ = ["router"]

router = APIRouter(prefix=PORTAL_PATH, route_class=PortalRoute, include_in_schema=False)
