r"""Refuse request text that cannot be stored: lone UTF-16 surrogates.

JSON may escape a surrogate code point without its pair (``"\ud800"``), and Python decodes it
into a string no database can store (it is not valid UTF-8, RFC 3629 section 3). Such a value
is refused up front with 400 naming the field, whatever the route, instead of failing in the
store as a 500.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from corral.errors import InvalidRequest

__all__ = ["reject_lone_surrogates"]

_ESCAPED = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A ``\\uD800``-``\\uDFFF`` escape: JSON's only way to carry a surrogate in ASCII."""
_RAW = re.compile(rb"\xed[\xa0-\xbf]")
"""The UTF-8-like encoding of a surrogate, which Python's JSON decoder also lets through."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_surrogate(document: Any) -> str | None:
    """The dotted path of the first string (key or value) holding a surrogate, if any."""
    stack: list[tuple[str, Any]] = [("body", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return path
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}", item) for index, item in enumerate(value))
    return None


async def reject_lone_surrogates(request: Request) -> None:
    """A dependency of every route: 400 for a JSON body holding a lone surrogate.

    Cheap for ordinary bodies: the parsed body is walked only when its bytes contain a
    surrogate escape.

    Raises:
        InvalidRequest: naming the field that holds it.
    """
    body = await request.body()
    if not body or not (_ESCAPED.search(body) or _RAW.search(body)):
        return
    try:
        document = await request.json()
    except (ValueError, RecursionError):
        return  # not JSON: the route's own body validation answers
    path = _first_surrogate(document)
    if path is not None:
        raise InvalidRequest(
            f"{path} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which "
            "is not text and cannot be stored; send valid Unicode.",
            code="invalid_text",
        )
