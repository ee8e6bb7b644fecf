"""The CLI's HTTP client for Corral's REST API; turns API errors into exit codes."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import httpx
import typer

from corral.settings import get_settings

__all__ = ["ApiClient", "fail"]


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


PRINCIPAL_ENV = "CORRAL_PRINCIPAL"
"""Environment variable naming the principal the CLI acts as (``user:bob``)."""


def _principal_header() -> dict[str, str]:
    principal = os.environ.get(PRINCIPAL_ENV, "").strip()
    return {"X-Corral-Principal": principal} if principal else {}


class ApiClient:
    """Calls the API at ``CORRAL_API__URL`` (default ``http://127.0.0.1:8420``).

    Exit codes on errors: 2 for invalid input (HTTP 400/422), 1 for anything else.

    Requests act as the principal in ``CORRAL_PRINCIPAL`` when it is set (sent as the
    ``X-Corral-Principal`` header, honoured while the server trusts it); otherwise as the
    server's default principal, the local admin.
    """

    def __init__(self, base_url: str | None = None, *, timeout_seconds: float = 30.0) -> None:
        self.base_url = (base_url or get_settings().api_url).rstrip("/")
        self.timeout_seconds = timeout_seconds

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the decoded JSON body; exit with a message on error."""
        try:
            # One connection per call: CLI commands make a handful of calls, and nothing is
            # left open when a command exits early.
            response = httpx.request(
                method,
                f"{self.base_url}{path}",
                timeout=self.timeout_seconds,
                headers={**_principal_header(), **kwargs.pop("headers", {})},
                **kwargs,
            )
        except httpx.ConnectError:
            fail(
                f"cannot reach Corral at {self.base_url}; start it with `corral up` "
                "(or set CORRAL_API__URL to where it runs)."
            )
        except httpx.TimeoutException:
            fail(f"Corral at {self.base_url} did not answer {method} {path} in time.")
        if response.is_success:
            return response.json()
        try:
            body = response.json()
            message = body.get("message") or str(body)
        except ValueError:
            message = response.text or response.reason_phrase
        fail(message, code=2 if response.status_code in (400, 422) else 1)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` with query parameters (``None`` values are dropped)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any, **params: Any) -> Any:
        """``POST path`` with a JSON body."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("POST", path, json=body, params=clean)
