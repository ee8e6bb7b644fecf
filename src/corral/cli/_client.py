"""The CLI's HTTP client for Corral's REST API; turns API errors into exit codes."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import typer

from corral.platform import ADMIN_KEY_FILE
from corral.settings import get_settings

__all__ = ["ADMIN_KEY_FILE", "ApiClient", "auth_headers", "credentials", "fail"]


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


API_KEY_ENV = "CORRAL_API_KEY"
"""Environment variable holding the API key (or OIDC token) the CLI sends."""

TENANT_ENV = "CORRAL_TENANT"
"""Environment variable naming the tenant to act in (users and platform admins)."""


def credentials() -> str | None:
    """The key the CLI sends: ``CORRAL_API_KEY``, else the local admin's key file, else none."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    path = get_settings().home / ADMIN_KEY_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def auth_headers() -> dict[str, str]:
    """``Authorization`` (and ``X-Corral-Tenant``) headers for the CLI's requests."""
    headers: dict[str, str] = {}
    key = credentials()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    tenant = os.environ.get(TENANT_ENV, "").strip()
    if tenant:
        headers["X-Corral-Tenant"] = tenant
    return headers


class ApiClient:
    """Calls the API at ``CORRAL_API__URL`` (default ``http://127.0.0.1:8420``).

    Exit codes on errors: 2 for invalid input (HTTP 400/422), 1 for anything else.

    Requests carry ``CORRAL_API_KEY`` when it is set, else the local admin's key that
    ``corral up`` wrote to ``$CORRAL_HOME/admin.key``; ``CORRAL_TENANT`` picks the tenant.
    """

    def __init__(self, base_url: str | None = None, *, timeout_seconds: float = 30.0) -> None:
        self.base_url = (base_url or get_settings().api_url).rstrip("/")
        self.timeout_seconds = timeout_seconds

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the decoded JSON body; exit with a message on error."""
        import httpx  # imported by the commands that call the API, not by `corral worker`

        try:
            # One connection per call: CLI commands make a handful of calls, and nothing is
            # left open when a command exits early.
            response = httpx.request(
                method,
                f"{self.base_url}{path}",
                timeout=self.timeout_seconds,
                headers={**auth_headers(), **kwargs.pop("headers", {})},
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
        if response.status_code == 401:
            message += (
                " Set CORRAL_API_KEY to a key of yours (`corral keys create` as an admin), or "
                "start `corral up` on this machine to get the local admin's key."
            )
        fail(message, code=2 if response.status_code in (400, 422) else 1)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` with query parameters (``None`` values are dropped)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any, **params: Any) -> Any:
        """``POST path`` with a JSON body."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("POST", path, json=body, params=clean)
