"""Redaction of revealed values and their encodings, and the per-call scope that records them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

import corral.secrets
from corral.secrets import REDACTED, current_secret_scope, redact_secrets, secret_scope
from corral.secrets._redact import record_revealed

VALUE = 'tok/en+with:specials=&"quotes" é'


def test_the_value_and_each_encoding_is_redacted() -> None:
    encodings = {
        "raw": VALUE,
        "base64": base64.b64encode(VALUE.encode()).decode(),
        "base64 unpadded": base64.b64encode(VALUE.encode()).decode().rstrip("="),
        "base64 url-safe": base64.urlsafe_b64encode(VALUE.encode()).decode(),
        "url": quote(VALUE, safe=""),
        "url path": quote(VALUE),
        "url form": quote_plus(VALUE),
        "json": json.dumps(VALUE)[1:-1],
        "json utf-8": json.dumps(VALUE, ensure_ascii=False)[1:-1],
        "json twice": json.dumps(json.dumps(VALUE)[1:-1])[1:-1],
    }
    for name, encoded in encodings.items():
        text = redact_secrets(f"before {encoded} after", [VALUE])
        assert text == f"before {REDACTED} after", name


def test_hex_and_case_variants_a_tool_echoes_back_are_redacted() -> None:
    # A tool that hex-dumps or upper-cases what it was given echoes the secret in that form.
    value = "sk-live-Abc123xyz"
    hexed = value.encode().hex()
    variants = {
        "upper": value.upper(),
        "lower": value.lower(),
        "swapped": value.swapcase(),
        "hex": hexed,
        "hex upper": hexed.upper(),
        "hex colons": ":".join(hexed[i : i + 2] for i in range(0, len(hexed), 2)),
        "hex spaces upper": " ".join(hexed[i : i + 2] for i in range(0, len(hexed), 2)).upper(),
        "hex escapes": "".join(f"\\x{b:02x}" for b in value.encode()),
        "base64 of the upper-case form": base64.b64encode(value.upper().encode()).decode(),
    }
    for name, shown in variants.items():
        text = redact_secrets(f"before {shown} after", [value])
        assert text == f"before {REDACTED} after", name
    shown = quote(VALUE, safe="").lower()
    assert redact_secrets(f"[{shown}]", [VALUE]) == f"[{REDACTED}]"


def test_a_non_ascii_value_is_redacted_in_its_case_mappings() -> None:
    value = "Straße-Geheimnis"
    for shown in (value.upper(), value.casefold(), value.lower()):
        assert redact_secrets(f"<{shown}>", [value]) == f"<{REDACTED}>", shown


def test_a_value_inside_a_longer_base64_text_is_redacted() -> None:
    password = "correct horse battery staple"
    for prefix in ("", "u", "us", "user:", "alice:"):
        header = base64.b64encode(f"{prefix}{password}".encode()).decode()
        redacted = redact_secrets(f"Authorization: Basic {header}", [password])
        assert REDACTED in redacted, prefix
        # What is left around the marker is at most the characters mixing in other bytes.
        leftover = redacted.removeprefix("Authorization: Basic ").replace(REDACTED, "")
        assert len(leftover) <= len(base64.b64encode(prefix.encode())) + 3, prefix


def test_short_values_are_skipped_and_longer_matches_win() -> None:
    assert redact_secrets("abc and ab", ["abc", "ab"]) == "abc and ab"
    assert redact_secrets("key=abcd1234", ["abcd", "abcd1234"]) == f"key={REDACTED}"
    assert redact_secrets("", ["abcd"]) == ""
    assert redact_secrets("nothing to hide", []) == "nothing to hide"


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(min_size=4, max_size=40).filter(lambda v: v.strip() == v and len(set(v)) > 2),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_no_value_survives_redaction(value: str, before: str, after: str) -> None:
    shown_forms = (
        value,
        value.upper(),
        value.lower(),
        json.dumps(value)[1:-1],
        quote(value, safe=""),
        value.encode().hex(),
        value.encode().hex().upper(),
    )
    for shown in shown_forms:
        assert shown not in redact_secrets(f"{before}{shown}{after}", [value])


async def test_the_scope_records_reveals_in_tasks_and_nested_scopes() -> None:
    assert current_secret_scope() is None
    record_revealed("outside-any-scope")

    async def reveal_in_task(value: str) -> None:
        record_revealed(value)

    with secret_scope() as outer:
        await asyncio.wait_for(reveal_in_task("in-a-task"), timeout=5)
        with secret_scope() as inner:
            record_revealed("nested-value")
            record_revealed("nested-value")
        assert current_secret_scope() is outer
    assert inner.values == ["nested-value"]
    assert outer.values == ["in-a-task", "nested-value"]
    assert current_secret_scope() is None


def test_the_package_docstring_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", corral.secrets.__doc__ or "", re.DOTALL)
    assert blocks
    for block in blocks:
        exec(block, {})
