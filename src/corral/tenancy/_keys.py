"""API key format and digests.

A key is ``crl_<key_id>_<secret>``: ``key_id`` is 12 lowercase hex digits (public: it names the
row), ``secret`` 32 random bytes in URL-safe base64 (43 characters). The store keeps only
``HMAC-SHA256(server_secret, "<key_id>:<secret>")`` (RFC 2104), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

__all__ = ["KEY_PREFIX", "generate_key", "key_digest", "parse_key"]

KEY_PREFIX: Final = "crl_"
_KEY = re.compile(r"^crl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def generate_key() -> tuple[str, str, str]:
    """A new key: ``(key_id, secret, full key)``."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def key_digest(server_secret: bytes, key_id: str, secret: str) -> str:
    """Hex HMAC-SHA256 of ``{key_id}:{secret}`` under the server's secret."""
    return hmac.new(server_secret, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()
