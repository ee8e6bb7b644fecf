"""The one place where Corral errors become HTTP responses.

Every error answer has one shape, :class:`ErrorOut` (``{code, message, issues?, ...}``): Corral's
own errors, request validation (422), bodies that do not parse (400), unknown paths (404) and
methods (405, with an ``Allow`` header naming every method of the path, RFC 9110 section
15.5.6). :func:`document_errors` declares the statuses each route can answer in OpenAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from corral.errors import (
    BudgetExceeded,
    Conflict,
    CorralError,
    Forbidden,
    InvalidContract,
    InvalidRequest,
    KillSwitchEngaged,
    LeaseLost,
    LocalModelUnavailable,
    MissingTenantScope,
    ModelAPIError,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    Unauthorized,
    UpstreamFailed,
)
from corral.observability import get_logger

__all__ = ["STATUS_CODES", "ErrorOut", "document_errors", "install_error_handlers", "status_for"]

_log = get_logger(__name__)


class ErrorOut(BaseModel):
    """Every error response: a stable code, a message saying how to fix it, and details.

    Some errors add fields: ``issues`` (invalid requests and contracts), ``kind``/``name``/
    ``known`` (404), ``quota``/``limit``/``retry_after_seconds`` (429), ``policy_decision_id``.
    """

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Machine-readable, snake_case, e.g. `agent_not_found`.")
    message: str = Field(description="What went wrong and how to fix it.")
    issues: list[Any] | None = Field(
        None, description="One entry per problem: invalid fields, contract issues."
    )


STATUS_CODES: list[tuple[type[CorralError], int]] = [
    (InvalidContract, 422),
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (QuotaExceeded, 429),
    (NotFound, 404),
    (Conflict, 409),
    (KillSwitchEngaged, 423),
    (PolicyDenied, 403),
    (BudgetExceeded, 429),
    (LocalModelUnavailable, 503),
    (ModelAPIError, 502),
    (UpstreamFailed, 502),
    # Programming errors and worker-internal conditions: never the caller's to fix.
    (MissingTenantScope, 500),
    (LeaseLost, 500),
]
"""Error class -> HTTP status; the first matching class wins. Anything else: 500."""

_INTERNAL: tuple[type[CorralError], ...] = (MissingTenantScope, LeaseLost)
"""Errors whose message stays in the server log: it may name another tenant or a worker."""

_CODE_STATUS = {
    "store_not_migrated": 503,
    # The server's master key for secrets is missing or malformed: fixed by configuration.
    "master_key_missing": 503,
    "master_key_invalid": 503,
}


def status_for(error: CorralError) -> int:
    """The HTTP status of ``error``."""
    for cls, status in STATUS_CODES:
        if isinstance(error, cls):
            return status
    return _CODE_STATUS.get(error.code, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Map Corral's errors, validation and HTTP errors to :class:`ErrorOut` JSON bodies."""

    @app.exception_handler(CorralError)
    async def _corral_error(request: Request, exc: CorralError) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="corral"'  # RFC 6750 section 3
        if isinstance(exc, QuotaExceeded):
            headers["Retry-After"] = str(max(1, exc.retry_after_seconds))
        body = exc.to_dict()
        if isinstance(exc, _INTERNAL):
            _log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
            body = {
                "code": exc.code,
                "message": f"Internal error ({exc.code}); the server log has the details.",
            }
        return JSONResponse(body, status_code=status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return JSONResponse(
            {
                "code": "invalid_request",
                "message": "The request is invalid: " + "; ".join(problems),
                "issues": problems,
            },
            status_code=422,
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
            message = (
                f"{request.method} is not allowed on {request.url.path}; allowed: "
                f"{headers['Allow']}."
            )
            code = "method_not_allowed"
        elif exc.status_code == 404:
            message = f"No such path: {request.url.path} (GET /openapi.json lists every route)."
            code = "not_found"
        elif exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            message = "The request body nests too deeply to parse; send a flatter JSON document."
            code = "invalid_request"
        elif exc.status_code == 400:
            message = f"The request body could not be parsed: {exc.detail}."
            code = "invalid_request"
        else:
            message, code = str(exc.detail), "http_error"
        return JSONResponse(
            {"code": code, "message": message}, status_code=exc.status_code, headers=headers
        )


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path (Starlette names only the first)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    routes: list[Any] = list(app.router.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            routes.extend(included.routes)
        elif route.matches(scope)[0] is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


_DESCRIPTIONS = {
    400: "Bad request: the body does not parse, or holds text that cannot be stored.",
    401: "Missing or invalid credentials (`Authorization: Bearer <API key or token>`).",
    403: "The caller lacks the permission, its tenant is suspended, or policy denies it.",
    404: "No such object in the caller's tenant.",
    409: "The request contradicts the stored state.",
    413: "The request body or headers are too large.",
    422: "The request does not match the schema.",
    423: "A kill switch covers it.",
    429: "A rate limit or tenant quota is used up (see `Retry-After`).",
    502: "An upstream (model provider, MCP server, HTTP API) failed.",
    503: "The server is not ready: migrate the store, or configure the master key.",
}

BEARER_SCHEME = "bearer"
"""The OpenAPI security scheme of every authenticated route."""


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {400, 413, 422}  # any route: unparsable or unstorable body, too large, invalid
    if operation.get("x-corral-permission") != "public":
        statuses |= {401, 403, 429}  # credentials, permission or suspension, rate limit
    names = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "query"}
    if "{" in path or method != "get":
        statuses |= {404, 409}
    elif names & {"after", "before", "tenant"}:
        statuses.add(404)  # a string cursor or a tenant naming nothing
    return statuses


def document_errors(
    schema: dict[str, Any], *, extra: dict[tuple[str, str], set[int]] | None = None
) -> dict[str, Any]:
    """Declare bearer auth and every error status each operation can answer, as :class:`ErrorOut`.

    Args:
        schema: The OpenAPI document FastAPI generated (changed in place).
        extra: More statuses by ``(method, path)``, e.g. ``{("post", "/v1/agents/{name}/runs"):
            {423}}``.

    Returns:
        ``schema``.
    """
    extra = extra or {}
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorOut"] = ErrorOut.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`crl_<key id>_<secret>`, `corral keys create`) or an "
            "OIDC access token.",
        }
    }
    ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if operation.get("x-corral-permission") != "public":
                operation["security"] = [{BEARER_SCHEME: []}]
            responses = operation.setdefault("responses", {})
            statuses = _statuses(path, method, operation) | extra.get((method, path), set())
            for status in sorted(statuses):
                described = responses.get(str(status), {}).get("description")
                if described == "Validation Error":  # FastAPI's default for 422
                    described = None
                responses[str(status)] = {
                    "description": described or _DESCRIPTIONS.get(status, "Error."),
                    "content": {"application/json": {"schema": ref}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    return schema
