"""The one place where Corral errors become HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral.errors import (
    BudgetExceeded,
    Conflict,
    CorralError,
    Forbidden,
    InvalidContract,
    InvalidRequest,
    KillSwitchEngaged,
    LocalModelUnavailable,
    ModelAPIError,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    Unauthorized,
    UpstreamFailed,
)

__all__ = ["STATUS_CODES", "install_error_handlers", "status_for"]

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
]
"""Error class -> HTTP status; the first matching class wins. Anything else: 500."""

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
    """Map :class:`CorralError` and request validation errors to JSON bodies ``{code, message}``."""

    @app.exception_handler(CorralError)
    async def _corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="corral"'  # RFC 6750 section 3
        if isinstance(exc, QuotaExceeded):
            headers["Retry-After"] = str(max(1, exc.retry_after_seconds))
        return JSONResponse(exc.to_dict(), status_code=status_for(exc), headers=headers)

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
