"""CLI: ``corral whoami``, ``tenants``, ``users``, ``keys``, ``roles``, ``quotas``.

Each command names the permission its REST route needs (``Permission:`` in its help).
"""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._client import ApiClient
from corral.cli._render import ago, table

__all__ = ["keys_app", "quotas_app", "roles_app", "tenants_app", "users_app", "whoami"]


def whoami() -> None:
    """Show who your credentials belong to, the tenant you act in, and your roles.

    Permission: identity.read. Credentials: CORRAL_API_KEY, else the local admin's key that
    `corral up` wrote to $CORRAL_HOME/admin.key; CORRAL_TENANT picks the tenant.

    Example: corral whoami
    """
    me = ApiClient().get("/v1/whoami")
    typer.echo(f"{me['principal']} ({me['kind']}) in tenant {me['tenant_id']!r}")
    typer.echo(f"roles: {', '.join(me['roles']) or 'none'}")
    if me["accountable"] != me["principal"]:
        typer.echo(f"accountable: {me['accountable']} (approvals count you as this person)")
    if me["groups"]:
        typer.echo(f"groups: {', '.join(me['groups'])}")
    if me["agent"]:
        typer.echo(f"agent: {me['agent']}")


tenants_app = typer.Typer(
    help="Create, list, suspend and resume tenants (platform admins).", no_args_is_help=True
)


@tenants_app.command("create")
def tenants_create(
    tenant_id: Annotated[str, typer.Argument(help="2-63 lowercase letters, digits, dashes.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a tenant. Permission: tenants.manage.

    Then give it an admin: `CORRAL_TENANT=ID corral keys create --name admin --role admin`.

    Example: corral tenants create team-red --name "Team Red"
    """
    tenant = ApiClient().post("/v1/tenants", {"id": tenant_id, "display_name": name})
    typer.echo(f"tenant {tenant['id']!r} created ({tenant['display_name']}).")
    typer.echo(
        f"Give it an admin: CORRAL_TENANT={tenant['id']} corral keys create --name admin "
        "--role admin"
    )


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants. Permission: tenants.manage.

    Example: corral tenants list
    """
    page = ApiClient().get("/v1/tenants")
    typer.echo(
        table(
            ["TENANT", "NAME", "STATUS", "CREATED", "REASON"],
            [
                [
                    t["id"],
                    t["display_name"],
                    t["status"],
                    ago(t["created_at"]),
                    t["suspended_reason"] or "",
                ]
                for t in page["items"]
            ],
        )
    )


@tenants_app.command("suspend")
def tenants_suspend(
    tenant_id: Annotated[str, typer.Argument(help="Tenant to suspend.")],
    reason: Annotated[str, typer.Option(help="Shown to the tenant's callers; audited.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Suspend even the tenant holding every working platform-admin key: no one "
            "can ever resume it.",
        ),
    ] = False,
) -> None:
    """Suspend a tenant: its requests get 403, its runs end KILLED. Permission: tenants.manage.

    A tenant holding every working platform-admin key is refused unless --force.

    Example: corral tenants suspend team-red --reason "unpaid invoice"
    """
    body = {"reason": reason, "force": force}
    tenant = ApiClient().post(f"/v1/tenants/{tenant_id}/suspend", body)
    typer.echo(f"tenant {tenant['id']!r} suspended: {tenant['suspended_reason']}")
    typer.echo(f"Resume it with: corral tenants resume {tenant['id']}")


@tenants_app.command("resume")
def tenants_resume(tenant_id: Annotated[str, typer.Argument(help="Tenant to resume.")]) -> None:
    """Resume a suspended tenant. Permission: tenants.manage.

    Example: corral tenants resume team-red
    """
    tenant = ApiClient().post(f"/v1/tenants/{tenant_id}/resume", None)
    typer.echo(f"tenant {tenant['id']!r} is {tenant['status']}.")


users_app = typer.Typer(
    help="Local users: people who approve with personal keys (embedded mode, admins).",
    no_args_is_help=True,
)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User name; the principal is user:NAME.")],
    display_name: Annotated[str | None, typer.Option(help="Shown in listings.")] = None,
) -> None:
    """Create a local user (audited). Permission: users.manage.

    Without an identity provider, this is how a second person gets an identity of their own:
    their personal keys count as them, not as you, in approvals.

    Example: corral users create alice --display-name "Alice Martin"
    """
    user = ApiClient().post("/v1/users", {"name": name, "display_name": display_name})
    typer.echo(f"user:{user['name']} created ({user['display_name']}).")
    typer.echo(f"Give them a key: corral keys create --user {user['name']} --role approver")


@users_app.command("list")
def users_list() -> None:
    """List the tenant's local users. Permission: users.read.

    Example: corral users list
    """
    page = ApiClient().get("/v1/users")
    typer.echo(
        table(
            ["USER", "NAME", "CREATED BY", "CREATED"],
            [
                [f"user:{u['name']}", u["display_name"], u["created_by"], ago(u["created_at"])]
                for u in page["items"]
            ],
        )
    )


keys_app = typer.Typer(
    help="API keys of service accounts, local users and agents.", no_args_is_help=True
)


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str | None,
        typer.Option(help="Key name; a service account's principal is service:NAME."),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(help="A role (repeat): viewer, builder, operator, approver, admin."),
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Bind the key to this agent (an agent identity).")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="A personal key of this local user (`corral users create`)."),
    ] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="Expire after N days.")] = None,
) -> None:
    """Create an API key; it is printed once and cannot be shown again. Permission: keys.manage.

    A service account's key (--name) and an agent key (--agent) count as you in approvals; a
    personal key (--user NAME, named NAME unless --name says otherwise) counts as that user.

    Example: corral keys create --name ci-bot --role builder
    Example: corral keys create --user alice --role approver
    """
    if name is None and user is None:
        raise typer.BadParameter("give --name NAME (or --user NAME for a personal key)")
    body = {
        "name": name or user,
        "roles": role or [],
        "agent": agent,
        "user": user,
        "expires_in_days": expires_in_days,
    }
    key = ApiClient().post("/v1/keys", body)
    typer.echo(
        f"key {key['id']} for {key['principal']} ({', '.join(key['roles'])}), accountable: "
        f"{key['accountable']}:",
        err=True,
    )
    typer.echo(key["key"])
    typer.echo("Store it now: it is not shown again. Use it as CORRAL_API_KEY.", err=True)


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--include-revoked")] = False,
) -> None:
    """List the tenant's keys (never their secrets). Permission: keys.manage.

    CREATED BY is the principal that made the key; ACCOUNTABLE the person approvals count it
    as.

    Example: corral keys list
    """
    page = ApiClient().get("/v1/keys", include_revoked=include_revoked)
    typer.echo(
        table(
            [
                "KEY ID",
                "NAME",
                "PRINCIPAL",
                "CREATED BY",
                "ACCOUNTABLE",
                "ROLES",
                "CREATED",
                "EXPIRES",
                "REVOKED",
            ],
            [
                [
                    k["id"],
                    k["name"],
                    k["principal"],
                    k["created_by"],
                    k["accountable"],
                    ",".join(k["roles"]),
                    ago(k["created_at"]),
                    ago(k["expires_at"]),
                    ago(k["revoked_at"]),
                ]
                for k in page["items"]
            ],
        )
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (`corral keys list`).")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Revoke even the last working platform-admin key: no one can ever create "
            "another or resume a tenant.",
        ),
    ] = False,
) -> None:
    """Revoke a key: it stops working at once. Permission: keys.manage.

    The last working platform-admin key is refused unless --force.

    Example: corral keys revoke 3f2a9c01b7d4
    """
    params = {"force": "true"} if force else {}
    key = ApiClient().request("DELETE", f"/v1/keys/{key_id}", params=params)
    typer.echo(f"key {key['id']} ({key['principal']}) revoked.")


roles_app = typer.Typer(help="Role grants in your tenant (admins).", no_args_is_help=True)


@roles_app.command("grant")
def roles_grant(
    subject: Annotated[str, typer.Argument(help="user:ID, group:NAME or service:NAME.")],
    role: Annotated[str, typer.Argument(help="viewer, builder, operator, approver or admin.")],
) -> None:
    """Grant a role in your tenant. Permission: members.manage.

    Example: corral roles grant group:platform-team operator
    """
    grant = ApiClient().post("/v1/role-grants", {"subject": subject, "role": role})
    typer.echo(f"{grant['subject']} holds {grant['role']!r} (granted by {grant['granted_by']}).")


@roles_app.command("revoke")
def roles_revoke(
    subject: Annotated[str, typer.Argument(help="user:ID, group:NAME or service:NAME.")],
    role: Annotated[str, typer.Argument(help="The role to take away.")],
) -> None:
    """Take a role away. Permission: members.manage.

    Example: corral roles revoke user:bob@example.com approver
    """
    ApiClient().request("POST", "/v1/role-grants/revoke", json={"subject": subject, "role": role})
    typer.echo(f"{subject} no longer holds {role!r}.")


@roles_app.command("list")
def roles_list() -> None:
    """List role grants of your tenant. Permission: members.manage.

    Example: corral roles list
    """
    page = ApiClient().get("/v1/role-grants")
    typer.echo(
        table(
            ["SUBJECT", "ROLE", "GRANTED BY", "GRANTED"],
            [
                [g["subject"], g["role"], g["granted_by"], ago(g["granted_at"])]
                for g in page["items"]
            ],
        )
    )


quotas_app = typer.Typer(help="Your tenant's quotas and today's usage.", no_args_is_help=True)


@quotas_app.command("list")
def quotas_list() -> None:
    """Quotas with today's usage (UTC day). Permission: quotas.read.

    Example: corral quotas list
    """
    quotas = ApiClient().get("/v1/quotas")
    typer.echo(
        table(
            ["QUOTA", "LIMIT", "USED", "RESETS"],
            [
                [
                    q["name"],
                    q["limit"] if q["limit"] is not None else "unlimited",
                    q["current"],
                    ago(q["resets_at"]),
                ]
                for q in quotas
            ],
        )
    )


@quotas_app.command("set")
def quotas_set(
    name: Annotated[
        str,
        typer.Argument(
            help="runs_per_day, concurrent_runs, model_tokens_per_day or cost_usd_per_day."
        ),
    ],
    limit: Annotated[str, typer.Argument(help="A number (USD for cost), or 'none' to remove.")],
) -> None:
    """Set or remove a quota of your tenant. Permission: quotas.manage.

    Example: corral quotas set runs_per_day 500
    """
    value = None if limit.lower() in ("none", "unlimited") else limit
    quota = ApiClient().request("PUT", f"/v1/quotas/{name}", json={"limit": value})
    shown = quota["limit"] if quota["limit"] is not None else "unlimited"
    typer.echo(f"quota {name}: {shown} (used today: {quota['current']}).")
