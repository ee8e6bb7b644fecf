"""AES-256-GCM envelope encryption of secret values, and the master key.

Every version of a secret gets a fresh random 256-bit *data key*. The value is encrypted with
the data key, and the data key is encrypted ("wrapped") with the *master key*; both with
AES-256-GCM and their own 96-bit random nonce (NIST SP 800-38D, section 8.2.2: random 96-bit
IVs, at most 2^32 encryptions per key; a data key encrypts one value, the master key wraps one
data key per secret version). Both encryptions authenticate the same associated data: the
tenant id, the secret's row id and its version. A ciphertext or wrapped key copied to another
tenant's row, another secret's row or another version fails to decrypt instead of revealing a
value under the wrong name.

The master key comes from ``CORRAL_SECRETS__MASTER_KEY`` (base64 of 32 random bytes), else from
``{CORRAL_HOME}/master.key``; in the embedded mode (SQLite store) that file is generated once with
permissions 0600. See :func:`load_master_key`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from corral._files import write_private_file
from corral.errors import CorralError
from corral.settings import MASTER_KEY_BYTES, decode_master_key
from corral.settings import MASTER_KEY_HINT as _GENERATE_HINT

__all__ = [
    "KEY_FILE_NAME",
    "MASTER_KEY_BYTES",
    "NONCE_BYTES",
    "MasterKey",
    "SealedValue",
    "associated_data",
    "decode_master_key",
    "load_master_key",
    "seal",
    "unseal",
]

NONCE_BYTES: Final = 12
"""96-bit GCM nonces (the length GCM is defined for without hashing the IV)."""
KEY_FILE_NAME: Final = "master.key"
"""The generated master key's file name under ``CORRAL_HOME``."""

_KEY_ID_CONTEXT: Final = b"corral-master-key-id/v1\x00"
_AD_PREFIX: Final = b"corral-secret/v1"


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps every data key.

    Attributes:
        key: 32 bytes; never printed (``repr`` leaves it out).
        key_id: 16 hex digits identifying the key without revealing it (a SHA-256 of a fixed
            context and the key), stored with every secret so a wrong key is reported as such.
        source: Where it came from: ``CORRAL_SECRETS__MASTER_KEY`` or the key file's path.
    """

    key: bytes = field(repr=False)
    key_id: str
    source: str

    @classmethod
    def from_bytes(cls, key: bytes, *, source: str) -> MasterKey:
        """A master key from its 32 bytes."""
        if len(key) != MASTER_KEY_BYTES:
            raise ValueError(f"a master key has {MASTER_KEY_BYTES} bytes, not {len(key)}")
        key_id = hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]
        return cls(key, key_id, source)


@dataclass(frozen=True)
class SealedValue:
    """An encrypted secret value: what the ``secrets`` table stores instead of the value.

    Attributes:
        master_key_id: :attr:`MasterKey.key_id` of the key that wrapped the data key.
        wrapped_key: The data key encrypted with the master key (32 bytes + 16-byte tag).
        key_nonce: Nonce of the wrapping (12 bytes).
        nonce: Nonce of the value's encryption (12 bytes).
        ciphertext: The UTF-8 value encrypted with the data key, plus the 16-byte tag.
    """

    master_key_id: str
    wrapped_key: bytes
    key_nonce: bytes
    nonce: bytes
    ciphertext: bytes


def associated_data(tenant_id: str, secret_id: str, version: int) -> bytes:
    """The bytes both encryptions of a secret version authenticate.

    A fixed prefix, then tenant id, secret id and version, each length-prefixed so no two
    different triples give the same bytes.
    """
    parts = [_AD_PREFIX, tenant_id.encode(), secret_id.encode(), str(version).encode()]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def seal(
    master: MasterKey, value: str, *, tenant_id: str, secret_id: str, version: int
) -> SealedValue:
    """Encrypt ``value`` under a fresh data key, wrapped by ``master``.

    Args:
        master: The master key.
        value: The plaintext.
        tenant_id: Tenant owning the secret (authenticated, not encrypted).
        secret_id: The secret's row id (authenticated).
        version: The version being written (authenticated).
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # imported when first used

    data_key = AESGCM.generate_key(bit_length=256)
    ad = associated_data(tenant_id, secret_id, version)
    nonce, key_nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, value.encode(), ad)
    wrapped = AESGCM(master.key).encrypt(key_nonce, data_key, ad)
    return SealedValue(master.key_id, wrapped, key_nonce, nonce, ciphertext)


def unseal(
    master: MasterKey, sealed: SealedValue, *, tenant_id: str, secret_id: str, version: int
) -> str:
    """Decrypt a sealed value, checking that it belongs to this tenant, secret and version.

    Raises:
        CorralError: ``code="secret_undecryptable"`` when the value was sealed under another
            master key (its id differs), or authentication fails: the row was tampered with,
            or copied from another tenant, secret or version. The message names neither key.
    """
    if sealed.master_key_id != master.key_id:
        raise CorralError(
            f"secret {secret_id!r} was encrypted under master key id {sealed.master_key_id!r} "
            f"but this process uses key id {master.key_id!r} (from {master.source}); run every "
            "API replica and worker with the same CORRAL_SECRETS__MASTER_KEY, or set the "
            "secret again",
            code="secret_undecryptable",
        )
    from cryptography.exceptions import InvalidTag  # imported when first used
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ad = associated_data(tenant_id, secret_id, version)
    try:
        data_key = AESGCM(master.key).decrypt(sealed.key_nonce, sealed.wrapped_key, ad)
        plaintext = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, ad)
    except InvalidTag:
        raise CorralError(
            f"secret {secret_id!r} (version {version}) failed authentication: its stored "
            "ciphertext does not belong to this tenant, secret and version (tampered with or "
            "copied from another row); set the secret again",
            code="secret_undecryptable",
        ) from None
    return plaintext.decode()


def load_master_key(configured: str | None, home: Path, *, generate: bool) -> MasterKey:
    """The master key: configured, else read from ``{home}/master.key``, else generated there.

    Args:
        configured: The value of ``CORRAL_SECRETS__MASTER_KEY`` (base64), or ``None``.
        home: ``CORRAL_HOME``.
        generate: Create the key file when it is missing (the embedded mode). Otherwise a
            missing key is an error: API replicas and workers must share one key.

    Raises:
        CorralError: ``code="master_key_invalid"`` for a malformed key (configured or in the
            file) or a key file readable by others; ``code="master_key_missing"`` when there is
            no key and ``generate`` is false. Messages name the fix.
    """
    if configured is not None:
        try:
            key = decode_master_key(configured)
        except ValueError as exc:
            raise CorralError(
                f"CORRAL_SECRETS__MASTER_KEY: {exc}", code="master_key_invalid"
            ) from None
        return MasterKey.from_bytes(key, source="CORRAL_SECRETS__MASTER_KEY")
    path = home / KEY_FILE_NAME
    if not path.exists():
        if not generate:
            raise CorralError(
                "No master key for secrets: set CORRAL_SECRETS__MASTER_KEY to the base64 of 32 "
                f"random bytes, the same for every API replica and worker; {_GENERATE_HINT}.",
                code="master_key_missing",
            )
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` (0600), atomically: a racing process keeps the first."""
    key = base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode() + "\n"
    write_private_file(path, key, replace=False)


def _read_key_file(path: Path) -> MasterKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CorralError(
            f"the master key file {path} is readable by other users (mode {mode:04o}); "
            f"restrict it with `chmod 600 {path}`",
            code="master_key_invalid",
        )
    try:
        key = decode_master_key(path.read_text())
    except ValueError as exc:
        raise CorralError(f"{path}: {exc}", code="master_key_invalid") from None
    return MasterKey.from_bytes(key, source=str(path))
