"""Redaction of revealed secret values, and the per-call record of what was revealed.

The tool gateway opens a :func:`secret_scope` around every tool execution. Each value
:meth:`~corral.secrets.SecretBroker.reveal` returns inside it is recorded in the scope, and the
gateway passes the tool's output and errors through :func:`redact_secrets` with those values
before anything else (size cap, store, span, model) sees them.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import html
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = [
    "MIN_REDACTED_CHARS",
    "REDACTED",
    "RevealedSecrets",
    "SecretCheck",
    "current_secret_scope",
    "record_revealed",
    "redact_secrets",
    "secret_scope",
]

REDACTED: Final = "[REDACTED:secret]"
"""What a secret value (or an encoding of it) is replaced with."""
MIN_REDACTED_CHARS: Final = 4
"""Values shorter than this are not redacted: replacing every ``"ab"`` would destroy the output
while protecting nothing (such a value can be guessed)."""
_MIN_FRAGMENT_CHARS: Final = 8
"""A base64 fragment of a value inside a longer base64 text is redacted only from this length."""

SecretCheck = Callable[[str], Awaitable[None]]
"""``await check(name)`` before a secret is revealed; raises to refuse (``secret.use`` policy)."""


def _base64_fragments(data: bytes) -> set[str]:
    """Base64 of ``data`` at the three byte alignments it can have inside a longer encoding.

    Characters that mix bits of ``data`` with bits of the bytes around it are left out, so each
    fragment appears in ``base64(prefix + data + suffix)`` whatever the prefix and suffix (the
    way HTTP Basic credentials, ``base64("user:" + password)``, carry a password).
    """
    fragments = set()
    for shift, skip in ((0, 0), (1, 2), (2, 3)):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + data).decode().rstrip("=")
            if (shift + len(data)) % 3:
                text = text[:-1]
            text = text[skip:]
            if shift == 0 or len(text) >= _MIN_FRAGMENT_CHARS:
                fragments.add(text)
            if shift == 0:
                fragments.add(encode(data).decode())
    return {fragment for fragment in fragments if fragment}


def _hex_forms(data: bytes) -> set[str]:
    r"""Hex dumps of ``data``: contiguous, byte pairs separated by ``:`` or a space, ``\xHH``.

    Matched without regard to case (see :func:`redact_secrets`), so upper-case hex is covered.
    """
    pairs = [f"{byte:02x}" for byte in data]
    return {"".join(pairs), ":".join(pairs), " ".join(pairs), "".join(f"\\x{p}" for p in pairs)}


def _encodings(value: str) -> tuple[set[str], set[str]]:
    """``value``, its case mappings, and their common encodings.

    Returns:
        ``(matched without regard to case, matched exactly)``: the text, URL, JSON, HTML and
        hex forms; the base64 forms.
    """
    blind: set[str] = set()
    exact: set[str] = set()
    for form in {value, value.upper(), value.lower(), value.casefold()}:
        json_ascii = json.dumps(form)[1:-1]
        blind |= {
            form,
            quote(form, safe=""),
            quote(form),
            quote_plus(form),
            json_ascii,
            json.dumps(form, ensure_ascii=False)[1:-1],
            json.dumps(json_ascii)[1:-1],
            html.escape(form),
        }
        blind |= _hex_forms(form.encode())
        exact |= _base64_fragments(form.encode())
    return {v for v in blind if v}, {v for v in exact if v} - blind


def redact_secrets(text: str, values: Iterable[str]) -> str:
    r"""Replace every revealed value, and its common encodings, with ``[REDACTED:secret]``.

    Forms covered, for the value and for its upper-case, lower-case and case-folded forms:
    the raw text; standard and URL-safe base64 (padded or not, and at the three alignments it
    can have inside a longer base64 text); URL encoding (``quote`` with and without ``/`` safe,
    ``quote_plus``); the JSON string escaping (ASCII and UTF-8, and escaped twice); HTML
    escaping; hex of the UTF-8 bytes (contiguous, ``:``- or space-separated pairs, ``\xHH``).
    Every form is matched without regard to case (a tool that upper-cases or hex-dumps what it
    echoes, ``%2f`` for ``%2F``), except base64, whose letters' case carries the data: there a
    case-blind match would only redact more, never less, but would also hit unrelated text.
    Longer matches win over shorter ones. Values shorter than :data:`MIN_REDACTED_CHARS`
    characters are skipped.

    Args:
        text: Tool output or an error message.
        values: Revealed secret values.

    Returns:
        ``text`` with the values replaced (``text`` itself when nothing matched).
    """
    blind: set[str] = set()
    exact: set[str] = set()
    for value in values:
        if len(value) >= MIN_REDACTED_CHARS:
            case_blind, case_exact = _encodings(value)
            blind |= case_blind
            exact |= case_exact
    if not (blind or exact) or not text:
        return text
    # Alternatives are tried in order: longest first, so a longer match wins.
    ordered = sorted(
        [(v, True) for v in blind] + [(v, False) for v in exact - blind],
        key=lambda item: (-len(item[0]), item[0]),
    )
    pattern = "|".join(f"(?i:{re.escape(v)})" if fold else re.escape(v) for v, fold in ordered)
    return re.sub(pattern, REDACTED, text)


@dataclass
class RevealedSecrets:
    """What one tool call revealed, and how it may reveal more.

    Attributes:
        check: The ``secret.use`` check of the call (see
            :meth:`~corral.secrets.SecretBroker.use_check`), or ``None`` for none.
        values: Values revealed so far, in order, without repeats.
        allowed: Names ``check`` allowed during the call (not asked again).
    """

    check: SecretCheck | None = None
    values: list[str] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)

    def add(self, value: str) -> None:
        """Record a revealed value."""
        if value not in self.values:
            self.values.append(value)


_SCOPE: contextvars.ContextVar[RevealedSecrets | None] = contextvars.ContextVar(
    "corral_revealed_secrets", default=None
)


@contextlib.contextmanager
def secret_scope(check: SecretCheck | None = None) -> Iterator[RevealedSecrets]:
    """Record the values revealed inside the block (tasks started in it included).

    The tool gateway opens one per tool execution and redacts its output with
    ``scope.values``. Values revealed in a nested scope are also recorded in the outer one.

    Args:
        check: The ``secret.use`` check :meth:`~corral.secrets.SecretBroker.render` runs for
            each name when its caller passes none.
    """
    parent = _SCOPE.get()
    scope = RevealedSecrets(check)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)
        if parent is not None:
            for value in scope.values:
                parent.add(value)


def current_secret_scope() -> RevealedSecrets | None:
    """The innermost open :func:`secret_scope`, or ``None`` outside any."""
    return _SCOPE.get()


def record_revealed(value: str) -> None:
    """Record ``value`` in the open scope, if any (called by every reveal)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.add(value)
