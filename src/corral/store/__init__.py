"""The store: engines, sessions, the declarative base and migrations (SQLite and PostgreSQL)."""

from corral.store._base import (
    DEFAULT_TENANT,
    PICO,
    Base,
    JSONType,
    TenantMixin,
    USDAmount,
    UTCDateTime,
    new_id,
    utcnow,
)
from corral.store._direct import execute_direct, insert_rows
from corral.store._engine import (
    SYSTEM,
    MissingTenantScope,
    Scope,
    Store,
    SystemScope,
    create_engine,
    insert_on_conflict,
    postgres_session_settings,
    skip_locked,
)
from corral.store._errors import is_transient_error
from corral.store._migrate import current_revision, ensure_migrated, head_revision, upgrade
from corral.store._pool import ConnectionBudget, check_pool_capacity

__all__ = [
    "DEFAULT_TENANT",
    "PICO",
    "SYSTEM",
    "Base",
    "ConnectionBudget",
    "JSONType",
    "MissingTenantScope",
    "Scope",
    "Store",
    "SystemScope",
    "TenantMixin",
    "USDAmount",
    "UTCDateTime",
    "check_pool_capacity",
    "create_engine",
    "current_revision",
    "ensure_migrated",
    "execute_direct",
    "head_revision",
    "insert_on_conflict",
    "insert_rows",
    "is_transient_error",
    "new_id",
    "postgres_session_settings",
    "skip_locked",
    "upgrade",
    "utcnow",
]
