"""Declarative base, column types shared by every domain's tables, and id/time helpers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, MetaData, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

__all__ = [
    "DEFAULT_TENANT",
    "PICO",
    "Base",
    "JSONType",
    "TenantMixin",
    "USDAmount",
    "UTCDateTime",
    "new_id",
    "utcnow",
]

DEFAULT_TENANT = "default"
"""The tenant every object belongs to until the identity issue introduces others."""

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A new opaque id such as ``run_3f2a...`` (prefix + 32 hex digits of a UUID4)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    SQLite has no timezone type: values are stored as naive UTC and come back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use corral.store.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, one function writing the text SQLAlchemy's chain writes; else the chain.

        SQLAlchemy chains :meth:`process_bind_param` (to UTC, naive) and the dialect's
        ``DATETIME`` text (a ``%``-format through a dict of the fields): about 4 us per value,
        and a run step binds about 19. The one function returns the same text (checked against
        the chain on sample values: other offsets, no microseconds, ``None``) and raises the
        same ``ValueError`` for a naive value; if the check fails (a different ``DATETIME``
        format), the chain is used.
        """
        chain = super().bind_processor(dialect)
        if dialect.name != "sqlite" or chain is None:
            return chain
        try:
            same = all(_sqlite_text(sample) == chain(sample) for sample in _SAMPLES)
        except Exception:  # any difference keeps SQLAlchemy's chain
            same = False
        return _sqlite_text if same else chain

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
_SAMPLES = (
    None,
    datetime(2026, 12, 7, 20, 55, 1, 123456, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2026, 6, 30, 23, 30, tzinfo=timezone(timedelta(hours=2, minutes=30))),
)


def _sqlite_text(value: datetime | None) -> str | None:
    """``value`` as SQLite's ``DATETIME`` text in UTC (``UTCDateTime``'s bind on SQLite)."""
    if value is None:
        return None
    tzinfo = value.tzinfo
    if tzinfo is None:
        raise ValueError("naive datetime given; use corral.store.utcnow()")
    if tzinfo is not UTC:
        value = value.astimezone(UTC)
    return _SQLITE_DATETIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


PICO = Decimal("1e-12")
"""The resolution of stored US dollar amounts: one picodollar."""


class USDAmount(TypeDecorator[Decimal]):
    """An exact US dollar amount, stored as whole picodollars (10^-12 USD) in a ``BIGINT``.

    Why not ``NUMERIC``: SQLite stores a fractional ``NUMERIC`` as a float and sums floats,
    so a day's ledger would drift. Integers are exact and summed exactly on both databases
    (PostgreSQL's ``sum(bigint)`` is a ``numeric``); a ``BIGINT`` holds up to about
    9.2 million dollars per row or sum. Amounts with more than 12 decimal places are rounded
    up (a cost is never understated). ``sum()`` over the column comes back as ``Decimal`` too.
    """

    impl = BigInteger()
    cache_ok = True

    def process_bind_param(self, value: Decimal | int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int((Decimal(value) / PICO).to_integral_value(rounding=ROUND_CEILING))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-12)


class _JSONB(TypeDecorator[Any]):
    """PostgreSQL's ``JSONB``, its dialect's package imported when PostgreSQL first uses it.

    ``sqlalchemy.dialects.postgresql`` is about 2.4 MB RSS that a process on SQLite (the
    embedded store) never needs; ``JSONType``'s variant is this type, so building the tables'
    metadata does not import it. DDL, bind and result processing are ``JSONB``'s own.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import JSONB

        return dialect.type_descriptor(JSONB())


JSONType = JSON().with_variant(_JSONB(), "postgresql")
"""JSON on SQLite, JSONB on PostgreSQL."""


class Base(DeclarativeBase):
    """Base of every Corral table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class TenantMixin:
    """Every table carries the tenant that owns the row."""

    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, index=True)
