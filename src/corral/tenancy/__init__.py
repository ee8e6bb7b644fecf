"""Tenants and identity: principals from API keys and OIDC tokens, local users, roles, quotas."""

from corral.tenancy._identity import Identity, load_or_create_secret
from corral.tenancy._keys import generate_key, key_digest, parse_key
from corral.tenancy._principal import Principal
from corral.tenancy._quotas import Quotas, QuotaUsage
from corral.tenancy._roles import (
    PERMISSIONS,
    PLATFORM_ADMIN,
    PUBLIC,
    ROLE_PERMISSIONS,
    ROLES,
    TENANT_ROLES,
    permits,
)
from corral.tenancy._service import (
    QUOTA_NAMES,
    CreatedKey,
    TenantKillSwitch,
    audit_identity_event,
    create_key,
    create_local_admin_key,
    create_tenant,
    grant_role,
    issue_key,
    list_grants,
    list_keys,
    list_quotas,
    list_tenants,
    revoke_key,
    revoke_role,
    set_quota,
    set_tenant_status,
)
from corral.tenancy._tables import ApiKeyRow, LocalUserRow, QuotaRow, RoleGrantRow, TenantRow
from corral.tenancy._users import accountable_humans, create_user, list_users

__all__ = [
    "PERMISSIONS",
    "PLATFORM_ADMIN",
    "PUBLIC",
    "QUOTA_NAMES",
    "ROLES",
    "ROLE_PERMISSIONS",
    "TENANT_ROLES",
    "ApiKeyRow",
    "CreatedKey",
    "Identity",
    "LocalUserRow",
    "Principal",
    "QuotaRow",
    "QuotaUsage",
    "Quotas",
    "RoleGrantRow",
    "TenantKillSwitch",
    "TenantRow",
    "accountable_humans",
    "audit_identity_event",
    "create_key",
    "create_local_admin_key",
    "create_tenant",
    "create_user",
    "generate_key",
    "grant_role",
    "issue_key",
    "key_digest",
    "list_grants",
    "list_keys",
    "list_quotas",
    "list_tenants",
    "list_users",
    "load_or_create_secret",
    "parse_key",
    "permits",
    "revoke_key",
    "revoke_role",
    "set_quota",
    "set_tenant_status",
]
