"""Header values without their surrounding whitespace, whichever HTTP parser read them."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["StripHeaderWhitespace"]

_OWS = b" \t"
_SP, _HTAB = 0x20, 0x09


class StripHeaderWhitespace:
    """ASGI middleware: strip leading and trailing spaces and tabs from request header values.

    A field value excludes its leading and trailing whitespace (RFC 9110, section 5.5). uvicorn's
    h11 parser strips it, its httptools parser (the one ``corral up`` runs) keeps it; with this
    middleware every route (``X-Corral-Tenant``, ``Mcp-Name``...) sees the same value under
    either. A request whose values have no surrounding whitespace, nearly every one, passes
    through unchanged: the header list is only scanned, not copied.

    Args:
        app: The application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            for _name, value in headers:
                if value and (value[0] in (_SP, _HTAB) or value[-1] in (_SP, _HTAB)):
                    scope["headers"] = [(key, val.strip(_OWS)) for key, val in headers]
                    break
        await self.app(scope, receive, send)
