"""The credential broker: tenant-scoped secrets, encrypted at rest, revealed only to tool calls.

Tools reference secrets as ``${secret:NAME}`` in their configuration (headers, environment,
URLs); the tool gateway's executors call :meth:`SecretBroker.render` at execution time, each
name passing the ``secret.use`` policy check first. Values revealed during a tool call are
redacted from its output by the gateway (:mod:`corral.secrets._redact`). A value never goes to
a log line, a span, an audit event, a policy decision or an API response: those carry the
secret's name and version only.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, cast

from opentelemetry import trace
from sqlalchemy import Connection, Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import AuditRecord, append_events
from corral.errors import InvalidRequest, NotFound, PolicyDenied
from corral.policy import (
    DecisionRow,
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyDecision,
    PolicyRequest,
    insert_decisions,
)
from corral.secrets._crypto import MasterKey, SealedValue, load_master_key, seal, unseal
from corral.secrets._redact import SecretCheck, current_secret_scope, record_revealed
from corral.secrets._tables import SecretRow
from corral.settings import Settings
from corral.store import Store, new_id, utcnow

__all__ = [
    "SECRET_NAME_PATTERN",
    "SECRET_REFERENCE_PATTERN",
    "SecretBroker",
    "SecretInfo",
    "check_secret_name",
    "secret_references",
]

SECRET_NAME_PATTERN: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
"""A secret name: a letter, then up to 127 letters, digits, ``_``, ``.`` or ``-``."""
SECRET_REFERENCE_PATTERN: Final = re.compile(r"\$\{secret:([^}]*)\}")
"""A reference to a secret in a template: ``${secret:NAME}``."""


_SECRETS = cast(Table, SecretRow.__table__)
_SEALED_COLUMNS = [
    _SECRETS.c[column]
    for column in (
        "id",
        "version",
        "master_key_id",
        "wrapped_key",
        "key_nonce",
        "nonce",
        "ciphertext",
    )
]


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: everything but its value.

    Attributes:
        name: The secret's name.
        version: 1 when created, +1 on every set.
        created_by: Principal that created it.
        updated_by: Principal that set the current version.
        created_at: When it was created (UTC).
        updated_at: When the current version was set (UTC).
    """

    name: str
    version: int
    created_by: str
    updated_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: SecretRow) -> SecretInfo:
        """The metadata of a stored secret."""
        return cls(
            row.name, row.version, row.created_by, row.updated_by, row.created_at, row.updated_at
        )


def check_secret_name(name: str) -> str:
    """Return ``name`` if it is a valid secret name.

    Raises:
        InvalidRequest: It does not match :data:`SECRET_NAME_PATTERN`.
    """
    if not SECRET_NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 140 else name[:137] + "..."
        raise InvalidRequest(
            f"{shown!r} is not a valid secret name: use a letter followed by up to 127 "
            "letters, digits, '_', '.' or '-' (e.g. 'github-token')",
            code="invalid_secret_name",
        )
    return name


def secret_references(template: str) -> builtins.list[str]:
    """The distinct secret names ``template`` references as ``${secret:NAME}``, in order.

    Raises:
        InvalidRequest: A reference names an invalid secret name.
    """
    names: builtins.list[str] = []
    for match in SECRET_REFERENCE_PATTERN.finditer(template):
        name = check_secret_name(match.group(1))
        if name not in names:
            names.append(name)
    return names


def _not_found(tenant_id: str, name: str) -> NotFound:
    return NotFound(
        f"Secret {name!r} is not set in tenant {tenant_id!r}; set it with "
        f"`corral secrets set {name}` (the value on stdin).",
        kind="secret",
        name=name,
    )


def _principal_actor(principal: EntityRef) -> str:
    """``Agent::"x"`` -> ``agent:x``; users and service accounts are named by their id."""
    return f"agent:{principal.id}" if principal.type == "Agent" else principal.id


def _trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class SecretBroker:
    """Stores, lists, deletes and reveals a tenant's secrets (``platform.secrets``).

    Args:
        store: Where the sealed secrets live.
        settings: ``secrets.master_key`` and ``home`` (the generated key file's directory).
        governance: Decides ``secret.use``; ``None``: :meth:`use_check` allows everything
            (tests of the broker alone).
    """

    def __init__(
        self, store: Store, settings: Settings, *, governance: Governance | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.governance = governance
        self._master: MasterKey | None = None

    @property
    def master_key(self) -> MasterKey:
        """The master key, loaded (or generated, in the embedded mode) on first use.

        Raises:
            CorralError: ``master_key_invalid`` or ``master_key_missing``; see
                :func:`corral.secrets._crypto.load_master_key`.
        """
        if self._master is None:
            configured = self.settings.secrets.master_key
            self._master = load_master_key(
                configured.get_secret_value() if configured is not None else None,
                self.settings.home,
                generate=self.settings.store_url.startswith("sqlite"),
            )
        return self._master

    async def set(self, tenant_id: str, name: str, value: str, *, actor: str) -> SecretInfo:
        """Create the secret, or rotate it: a new version that every later reveal returns.

        The row, its new sealed value and the audit event (``secret.created`` or
        ``secret.rotated``, with the name and version) commit in one transaction.

        Args:
            tenant_id: The tenant that owns the secret.
            name: The secret's name (see :data:`SECRET_NAME_PATTERN`).
            value: The plaintext: 1 to ``secrets.max_value_bytes`` UTF-8 bytes.
            actor: Principal setting it (``user:alice``).

        Returns:
            The secret's metadata (never the value).

        Raises:
            InvalidRequest: An invalid name, or an empty or oversized value.
            CorralError: The master key is missing or invalid.
        """
        check_secret_name(name)
        self._check_value(value)
        master = self.master_key
        for attempt in range(2):
            try:
                async with self.store.transaction(tenant_id) as session:
                    return await self._write(session, tenant_id, name, value, actor, master)
            except IntegrityError:
                # Another process created the same name between our read and our insert.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _check_value(self, value: str) -> None:
        limit = self.settings.secrets.max_value_bytes
        if not value:
            raise InvalidRequest(
                "The secret value is empty; pipe the value on stdin: "
                '`printf %s "$VALUE" | corral secrets set NAME`',
                code="invalid_secret_value",
            )
        if len(value.encode()) > limit:
            raise InvalidRequest(
                f"The secret value has {len(value.encode())} bytes; the limit is {limit} "
                "(CORRAL_SECRETS__MAX_VALUE_BYTES)",
                code="invalid_secret_value",
            )

    async def _write(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        value: str,
        actor: str,
        master: MasterKey,
    ) -> SecretInfo:
        row = await self._row(session, tenant_id, name, for_update=True)
        now = utcnow()
        if row is None:
            row = SecretRow(id=new_id("sec"), tenant_id=tenant_id, name=name, version=0)
            row.created_by, row.created_at = actor, now
            session.add(row)
        previous = row.version
        row.version = previous + 1
        sealed = seal(master, value, tenant_id=tenant_id, secret_id=row.id, version=row.version)
        row.master_key_id, row.wrapped_key = sealed.master_key_id, sealed.wrapped_key
        row.key_nonce, row.nonce, row.ciphertext = sealed.key_nonce, sealed.nonce, sealed.ciphertext
        row.updated_by, row.updated_at = actor, now
        await session.flush()
        details: dict[str, object] = {"name": name, "version": row.version}
        if previous:
            details["previous_version"] = previous
        action = "secret.rotated" if previous else "secret.created"
        await self._audit(
            session,
            tenant_id,
            AuditRecord(actor, action, f"secret:{name}", "success", details=details),
        )
        return SecretInfo.from_row(row)

    async def _row(
        self, session: AsyncSession, tenant_id: str, name: str, *, for_update: bool = False
    ) -> SecretRow | None:
        query = select(SecretRow).where(SecretRow.tenant_id == tenant_id, SecretRow.name == name)
        if for_update and self.store.dialect == "postgresql":
            query = query.with_for_update()
        return (await session.execute(query)).scalar_one_or_none()

    @staticmethod
    async def _audit(session: AsyncSession, tenant_id: str, record: AuditRecord) -> None:
        await session.run_sync(lambda sync: append_events(sync.connection(), tenant_id, [record]))

    async def list(
        self, tenant_id: str, *, limit: int | None = None, after: str | None = None
    ) -> builtins.list[SecretInfo]:
        """The tenant's secrets by name (metadata only).

        Args:
            tenant_id: The tenant.
            limit: At most this many; ``None``: all.
            after: Only names sorting after this one (the cursor of the previous page).
        """
        query = select(SecretRow).where(SecretRow.tenant_id == tenant_id).order_by(SecretRow.name)
        if after is not None:
            query = query.where(SecretRow.name > after)
        if limit is not None:
            query = query.limit(limit)
        async with self.store.read(tenant_id) as session:
            rows = (await session.execute(query)).scalars().all()
        return [SecretInfo.from_row(row) for row in rows]

    async def delete(self, tenant_id: str, name: str, *, actor: str) -> SecretInfo:
        """Delete a secret (its sealed value and data key with it), audited as ``secret.deleted``.

        Returns:
            The deleted secret's metadata.

        Raises:
            NotFound: The tenant has no secret of that name.
        """
        check_secret_name(name)
        async with self.store.transaction(tenant_id) as session:
            row = await self._row(session, tenant_id, name, for_update=True)
            if row is None:
                raise _not_found(tenant_id, name)
            info = SecretInfo.from_row(row)
            await session.delete(row)
            await session.flush()
            record = AuditRecord(
                actor,
                "secret.deleted",
                f"secret:{name}",
                "success",
                details={"name": name, "version": info.version},
            )
            await self._audit(session, tenant_id, record)
        return info

    async def reveal(self, tenant_id: str, name: str) -> str:
        """The current value of a secret, decrypted; recorded for redaction in the open scope.

        Only tool executors call this (through :meth:`render`), at execution time. The value
        is bound to ``tenant_id``: a row copied from another tenant fails to decrypt.

        Raises:
            InvalidRequest: An invalid name.
            NotFound: The tenant has no secret of that name (the message names
                ``corral secrets set NAME``).
            CorralError: ``secret_undecryptable``: another master key, or a tampered or
                copied row.
        """
        check_secret_name(name)
        # A Core statement on the session's connection (tenant filter written out; PostgreSQL's
        # row-level security still applies): a third of the ORM query's cost, on every call.
        query = select(*_SEALED_COLUMNS).where(
            _SECRETS.c.tenant_id == tenant_id, _SECRETS.c.name == name
        )
        async with self.store.read(tenant_id) as session:
            connection = await session.connection()
            row = (await connection.execute(query)).first()
        if row is None:
            raise _not_found(tenant_id, name)
        sealed = SealedValue(
            row.master_key_id, row.wrapped_key, row.key_nonce, row.nonce, row.ciphertext
        )
        value = unseal(
            self.master_key, sealed, tenant_id=tenant_id, secret_id=row.id, version=row.version
        )
        record_revealed(value)
        return value

    async def render(
        self, tenant_id: str, template: str, *, check: SecretCheck | None = None
    ) -> tuple[str, builtins.list[str]]:
        """Replace every ``${secret:NAME}`` in ``template`` with the secret's current value.

        For each distinct name, in order of first appearance, ``await check(name)`` runs
        before the value is revealed (the caller's ``secret.use`` decision: it raises to
        refuse). Without ``check``, inside a tool call, the call's own check runs (the one the
        gateway put in its :func:`~corral.secrets.secret_scope`), once per name and call.
        Substitution is one pass: a
        value containing ``${secret:...}`` is not expanded again.

        Args:
            tenant_id: The tenant whose secrets are used.
            template: Text with references, e.g. ``"Bearer ${secret:github-token}"``.
            check: ``await check(name)`` before each reveal; see :meth:`use_check`.

        Returns:
            ``(rendered text, revealed values)``; pass the values to
            :func:`~corral.secrets.redact_secrets` for anything derived from them outside a
            tool call (inside one, the gateway redacts the call's output itself).

        Raises:
            InvalidRequest: A reference names an invalid secret name.
            NotFound: A referenced secret is not set.
            PolicyDenied: ``check`` refused a name.
        """
        names = secret_references(template)
        if not names:
            return template, []
        # The call's own check decides each name once per call, however many templates use it.
        scope = current_secret_scope() if check is None else None
        if scope is not None:
            check = scope.check
        values: dict[str, str] = {}
        for name in names:
            if check is not None and (scope is None or name not in scope.allowed):
                await check(name)
                if scope is not None:
                    scope.allowed.add(name)
            values[name] = await self.reveal(tenant_id, name)
        rendered = SECRET_REFERENCE_PATTERN.sub(lambda m: values[m.group(1)], template)
        return rendered, builtins.list(values.values())

    def use_check(
        self,
        tenant_id: str,
        *,
        principal: Entity | None,
        resource: Entity,
        stage: str = "",
        requester: str = "",
        run_id: str | None = None,
        record: Callable[[DecisionRow, AuditRecord], None] | None = None,
    ) -> SecretCheck:
        """A ``check`` for :meth:`render` that decides Cedar action ``secret.use``.

        Each call decides ``principal`` (an ``Agent`` or ``ServiceAccount`` entity) using
        secret ``name`` through ``resource`` (the ``Tool`` entity being executed, or a
        ``Namespace``), with ``context.secret`` set to the name. The decision is stored with a
        ``secret.used`` audit event (the name, never the value), whatever its outcome: handed
        to ``record`` to be stored in the tool call's own transaction, or without ``record``
        in one transaction of its own. ``require_approval`` counts as a refusal: a tool call is
        approved as a whole through ``tool.call`` policies.

        Args:
            tenant_id: Tenant of the call.
            principal: Who calls; ``None`` when the caller is unknown (every use is refused).
            resource: The tool (or namespace) the secret is used through.
            stage: Stage of the run (``dev``...), ``""`` when unknown.
            requester: Who started the run, ``""`` when unknown.
            run_id: The run, if any (stored with the decision).
            record: ``record(decision_row, audit_event)`` of each decision, called before the
                check returns or raises; ``None``: stored by the broker.

        Returns:
            ``async check(name)``, raising :class:`~corral.errors.PolicyDenied` unless the
            decision is ``allow``.
        """

        async def check(name: str) -> None:
            if self.governance is None:
                return
            if principal is None:
                raise PolicyDenied(
                    f"secret {name!r} may not be used: this tool call has no calling principal "
                    "(agent or service account) to decide secret.use for",
                    code="secret_use_denied",
                )
            request = PolicyRequest(
                principal=principal.uid,
                action="secret.use",
                resource=resource.uid,
                context=PolicyContext(
                    tenant=tenant_id, stage=stage, requester=requester, secret=name
                ),
            )
            decision = await self.governance.decide(tenant_id, request, [principal, resource])
            row, event = _use_rows(tenant_id, request, decision, name, run_id)
            if record is not None:
                record(row, event)
            else:
                await self._record_use(tenant_id, row, event)
            if decision.decision != "allow":
                raise _use_denied(request, decision, name)

        return check

    async def _record_use(self, tenant_id: str, row: DecisionRow, event: AuditRecord) -> None:
        def write(connection: Connection) -> None:
            insert_decisions(connection, [row])
            append_events(connection, tenant_id, [event])

        # The runtime's hot-write path: one hand-off to SQLite's writer thread.
        await self.store.run_sync(write, tenant_id)


def _use_rows(
    tenant_id: str, request: PolicyRequest, decision: PolicyDecision, name: str, run_id: str | None
) -> tuple[DecisionRow, AuditRecord]:
    """The decision row and ``secret.used`` audit event of one ``secret.use`` decision."""
    row = DecisionRow.of(decision, request, tenant_id=tenant_id, run_id=run_id)
    event = AuditRecord(
        _principal_actor(request.principal),
        "secret.used",
        f"secret:{name}",
        "allowed" if decision.decision == "allow" else "denied",
        run_id=run_id,
        trace_id=_trace_id(),
        policy_decision_id=decision.id,
        details={"name": name, "through": str(request.resource)},
    )
    return row, event


def _use_denied(request: PolicyRequest, decision: PolicyDecision, name: str) -> PolicyDenied:
    if decision.decision == "require_approval":
        because = "policy requires an approval, which secret use does not take"
    else:
        because = "; ".join(decision.reasons) or "no policy permits it"
    policies = ", ".join(decision.determining_policies) or "default deny"
    return PolicyDenied(
        f"policy denies {request.principal} using secret {name!r} through {request.resource}: "
        f"{because} (policies: {policies}; decision {decision.id}). Permit it with a Policy: "
        f'permit (principal == {request.principal}, action == Action::"secret.use", resource) '
        f'when {{ context has secret && context.secret == "{name}" }};',
        code="secret_use_denied",
    )
