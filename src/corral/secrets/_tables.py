"""Secret rows: one per secret and tenant, holding only the sealed value of its current version."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow

__all__ = ["SecretRow"]


class SecretRow(TenantMixin, Base):
    """A tenant's secret: its name, current version and the value sealed with AES-256-GCM.

    The plaintext is never stored. Setting a secret again replaces the sealed value and bumps
    ``version`` (the previous version's data key is gone with it); deleting removes the row.
    See :mod:`corral.secrets._crypto` for the envelope.
    """

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """``sec_`` + 32 hex digits; part of the associated data of the encryption."""
    name: Mapped[str] = mapped_column(String(128))
    """``^[A-Za-z][A-Za-z0-9_.-]{0,127}$``, unique within the tenant."""
    version: Mapped[int] = mapped_column(Integer)
    """1 when created, +1 on every set (rotation)."""
    master_key_id: Mapped[str] = mapped_column(String(16))
    """Id of the master key that wrapped ``wrapped_key`` (not the key)."""
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    """This version's data key, encrypted with the master key (48 bytes with the tag)."""
    key_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    """12-byte nonce of the data key's wrapping."""
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    """12-byte nonce of the value's encryption."""
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    """The UTF-8 value encrypted with the data key, with its 16-byte tag."""
    created_by: Mapped[str] = mapped_column(String(200))
    updated_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
