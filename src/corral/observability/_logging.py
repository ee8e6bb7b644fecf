"""Structured logs: structlog over the standard library, configured once per process.

Every log line, Corral's own (:func:`get_logger`) and any library's that logs through
:mod:`logging` (uvicorn, SQLAlchemy...), goes through one chain of processors: the context bound
with :func:`bind_log_context` (``run_id``, ``tenant_id``, ``principal``...), the ``trace_id``
and ``span_id`` of the current OpenTelemetry span, level, logger name and an ISO-8601 UTC
timestamp, then :func:`redact_event` and the renderer: one JSON object per line by default,
coloured key=value text on a terminal (``CORRAL_LOG__FORMAT``).

Never a secret: :func:`redact_event` replaces the values of credential-named keys, bearer
tokens, Corral API keys and every secret value revealed in the current tool call (the secrets
domain's :func:`~corral.secrets.redact_secrets`, with the values of the open
:func:`~corral.secrets.secret_scope`) before a line is rendered.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, Final, TextIO

from opentelemetry import trace

from corral.secrets import REDACTED, current_secret_scope, redact_secrets
from corral.settings import LogSettings


@contextlib.contextmanager
def _absent(module: str) -> Iterator[None]:
    """Imports of ``module`` fail inside the block, unless it is already imported.

    ``structlog`` imports ``rich`` (with ``pygments`` and ``attrs``: about 5 MB RSS) whenever it
    is installed (``typer`` installs it), for its rich tracebacks and pretty-printed locals.
    Corral renders tracebacks with ``structlog.dev.plain_traceback`` and never renders locals,
    so a server or worker need not hold them: a ``None`` entry in ``sys.modules`` makes
    ``import rich`` raise ``ImportError``, which structlog treats as "not installed".
    """
    hidden = module not in sys.modules
    if hidden:
        sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hidden and sys.modules.get(module, False) is None:
            del sys.modules[module]


with _absent("rich"):
    import structlog

__all__ = [
    "LOG_CONTEXT_KEYS",
    "bind_log_context",
    "bind_log_values",
    "configure_logging",
    "get_logger",
    "redact_event",
]

LOG_CONTEXT_KEYS: Final = ("run_id", "trace_id", "span_id", "tenant_id", "principal")
"""The context every line carries when it is known (bound, or from the current span)."""

_SENSITIVE_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "password",
        "passwd",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "secret_value",
        "master_key",
        "server_secret",
        "cookie",
        "set_cookie",
    }
)
"""Keys whose values are credentials by their name (compared lower-case, ``-`` as ``_``)."""
_CREDENTIALS: Final = re.compile(
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # HTTP Authorization schemes
    r"|\bcrl_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}"  # Corral API keys: the key id stays
)
_HANDLER_MARK: Final = "_corral_log_handler"


def _scrub_credentials(match: re.Match[str]) -> str:
    if match.group(1):
        return f"{match.group(1)} {REDACTED}"
    return f"crl_{match.group(2)}_{REDACTED}"


def _redact_text(text: str, revealed: list[str]) -> str:
    if revealed:
        text = redact_secrets(text, revealed)
    return _CREDENTIALS.sub(_scrub_credentials, text)


def _redact_value(value: Any, revealed: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, revealed)
    if isinstance(value, dict):
        return {k: _redact_item(str(k), v, revealed) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, revealed) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _redact_text(str(value), revealed)


def _redact_item(key: str, value: Any, revealed: list[str]) -> Any:
    if value is not None and key.lower().replace("-", "_") in _SENSITIVE_KEYS:
        return REDACTED
    return _redact_value(value, revealed)


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: no secret leaves in a log line.

    Credential-named keys (``authorization``, ``api_key``, ``password``, ``token``...) lose
    their value; in every other value (nested ones and the formatted exception included),
    ``Bearer``/``Basic`` credentials, Corral API keys (``crl_<id>_<secret>``, the id kept) and
    the secret values revealed in the open :func:`~corral.secrets.secret_scope` (and their
    encodings) become ``[REDACTED:secret]``. Objects are rendered with ``str`` first.
    """
    scope = current_secret_scope()
    revealed = list(scope.values) if scope is not None else []
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key], revealed)
    return event_dict


def _add_span_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The current OpenTelemetry span's ``trace_id`` and ``span_id`` (W3C hex), if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _shared_processors() -> list[Any]:
    """What every line gets, from structlog or from the standard library."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        _add_span_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def get_logger(name: str) -> Any:
    """A structlog logger writing through the standard library logger ``name``.

    Usable before :func:`configure_logging` (its lines then reach whatever handlers the
    standard library has: pytest's ``caplog``, a host application's), and without touching
    structlog's global configuration. Keyword arguments become the line's keys; ``%``
    arguments are formatted as the standard library does::

        log = get_logger(__name__)
        log.info("run finished", status="SUCCEEDED")
        log.warning("lease %d on run %s was taken over", 3, "run_x")
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def bind_log_context(**values: Any) -> Iterator[None]:
    """Bind keys (``run_id=...``, ``tenant_id=...``) to every line logged inside the block.

    Context variables: tasks started inside the block inherit them; other tasks never see them.
    ``None`` values are left out.
    """
    bound = {key: value for key, value in values.items() if value is not None}
    with structlog.contextvars.bound_contextvars(**bound):
        yield


def bind_log_values(**values: Any) -> None:
    """Bind keys to every line logged later in the current task (a request's handler).

    For code that cannot wrap its work in :func:`bind_log_context` (a FastAPI dependency):
    each request runs in a task of its own, so the values end with it. ``None`` values are left
    out.
    """
    structlog.contextvars.bind_contextvars(
        **{key: value for key, value in values.items() if value is not None}
    )


def _renderer(settings: LogSettings, stream: TextIO) -> Any:
    console = settings.format == "console" or (
        settings.format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    if console:
        return structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.processors.JSONRenderer(default=str)


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Route every log line of this process through structlog (call it once, at start).

    Replaces the handler a previous call installed on the root logger (nothing else is
    removed), sets the root level, and lets uvicorn's loggers propagate to it.

    Args:
        settings: Format (``auto``: console on a terminal, JSON otherwise) and level.
        stream: Where lines go; ``None``: standard error.

    Returns:
        The handler installed on the root logger.
    """
    out = stream if stream is not None else sys.stderr
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            _renderer(settings, out),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
