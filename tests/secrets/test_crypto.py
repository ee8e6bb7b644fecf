"""The AES-256-GCM envelope and the master key: binding to tenant/secret/version, key checks."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.errors import CorralError
from corral.secrets import MasterKey, decode_master_key
from corral.secrets._crypto import SealedValue, load_master_key, seal, unseal
from corral.settings import Settings

KEY = os.urandom(32)
MASTER = MasterKey.from_bytes(KEY, source="test")


def sealed(value: str = "hunter2-but-longer", **where: object) -> SealedValue:
    bound = {"tenant_id": "acme", "secret_id": "sec_1", "version": 1, **where}
    return seal(MASTER, value, **bound)  # type: ignore[arg-type]


def test_a_value_round_trips_and_is_not_stored_in_the_clear() -> None:
    box = sealed("p@ss w0rd ünïcode")
    assert unseal(MASTER, box, tenant_id="acme", secret_id="sec_1", version=1) == (
        "p@ss w0rd ünïcode"
    )
    assert b"p@ss" not in box.ciphertext + box.wrapped_key
    assert (len(box.nonce), len(box.key_nonce), len(box.wrapped_key)) == (12, 12, 48)
    # A fresh data key and nonces every time: the same value never seals the same way.
    again = sealed("p@ss w0rd ünïcode")
    assert again.ciphertext != box.ciphertext and again.wrapped_key != box.wrapped_key


@pytest.mark.parametrize(
    "where",
    [
        {"tenant_id": "other-tenant"},
        {"secret_id": "sec_2"},
        {"version": 2},
    ],
)
def test_a_ciphertext_moved_to_another_tenant_secret_or_version_fails(
    where: dict[str, object],
) -> None:
    box = sealed()
    bound = {"tenant_id": "acme", "secret_id": "sec_1", "version": 1, **where}
    with pytest.raises(CorralError) as caught:
        unseal(MASTER, box, **bound)  # type: ignore[arg-type]
    assert caught.value.code == "secret_undecryptable"
    assert "copied from another row" in caught.value.message


def test_a_tampered_ciphertext_fails() -> None:
    box = sealed()
    flipped = bytes([box.ciphertext[0] ^ 1]) + box.ciphertext[1:]
    tampered = SealedValue(box.master_key_id, box.wrapped_key, box.key_nonce, box.nonce, flipped)
    with pytest.raises(CorralError, match="failed authentication"):
        unseal(MASTER, tampered, tenant_id="acme", secret_id="sec_1", version=1)


def test_another_master_key_is_named_as_such() -> None:
    other = MasterKey.from_bytes(os.urandom(32), source="CORRAL_SECRETS__MASTER_KEY")
    with pytest.raises(CorralError) as caught:
        unseal(other, sealed(), tenant_id="acme", secret_id="sec_1", version=1)
    message = caught.value.message
    assert MASTER.key_id in message and other.key_id in message
    assert "same CORRAL_SECRETS__MASTER_KEY" in message
    assert KEY.hex() not in message and base64.b64encode(KEY).decode() not in message
    assert "key=" not in repr(other) and KEY.hex() not in repr(other)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("changeme", "placeholder"),
        ("not base64 at all!", "not base64"),
        (base64.b64encode(os.urandom(16)).decode(), "got 16 bytes"),
        (base64.b64encode(b"0" * 32).decode(), "not random"),
    ],
)
def test_bad_master_keys_are_refused_with_the_fix(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_master_key(text)
    assert problem in str(caught.value)
    assert "openssl rand -base64 32" in str(caught.value)
    with pytest.raises(ValidationError) as settings_error:
        Settings(secrets={"master_key": text})
    assert problem in str(settings_error.value)
    assert text not in str(settings_error.value)


def test_url_safe_and_unpadded_keys_are_accepted() -> None:
    assert decode_master_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY
    assert decode_master_key(f"  {base64.b64encode(KEY).decode()}\n") == KEY


def test_the_embedded_mode_generates_a_0600_key_file_once(tmp_path: Path) -> None:
    first = load_master_key(None, tmp_path, generate=True)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.source == str(path)
    assert load_master_key(None, tmp_path, generate=True) == first
    assert load_master_key(None, tmp_path, generate=False).key_id == first.key_id
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_master_key(None, tmp_path, generate=True)
    (tmp_path / "master.key").chmod(0o644)
    with pytest.raises(CorralError) as caught:
        load_master_key(None, tmp_path, generate=True)
    assert caught.value.code == "master_key_invalid"
    assert f"chmod 600 {tmp_path / 'master.key'}" in caught.value.message


def test_without_generation_a_missing_key_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(CorralError) as caught:
        load_master_key(None, tmp_path, generate=False)
    assert caught.value.code == "master_key_missing"
    assert "CORRAL_SECRETS__MASTER_KEY" in caught.value.message
    assert not (tmp_path / "master.key").exists()


def test_a_configured_key_wins_over_the_file(tmp_path: Path) -> None:
    load_master_key(None, tmp_path, generate=True)
    configured = load_master_key(base64.b64encode(KEY).decode(), tmp_path, generate=True)
    assert (configured.key_id, configured.source) == (MASTER.key_id, "CORRAL_SECRETS__MASTER_KEY")
