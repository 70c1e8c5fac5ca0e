"""The ``reactions`` consumer: security events become the actions a platform takes.

Each action is a row of ``reaction_actions``, the hand-off point to the real session
stores, grant caches, signers and mailers, written once per (event, kind of action):

=========================  ====================================================  ==========
action                     on                                                    target
=========================  ====================================================  ==========
``revoke_user_sessions``   password changed, reset completed or required, user   the user
                           locked or disabled
``revoke_api_key_grants``  API key revoked                                       the key id
``reload_signing_keys``    DKIM key activated or retired                         the domain
``notify_customer``        second factor removed, API key created, allowlist     user or
                           entry added or removed, password reset required        account
=========================  ====================================================  ==========

The handlers are plain functions of (delivery, transaction); ``build_app`` registers them
on a ``ConsumerApp`` and ``list_actions`` reads the table back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.app import ConsumerApp
from consumers.delivery import Delivered
from consumers.store import ConsumerStore, Tx
from contracts.payloads import (
    AllowlistEntryAdded,
    AllowlistEntryRemoved,
    ApiKeyCreated,
    ApiKeyRevoked,
    DkimKeyActivated,
    DkimKeyRetired,
    PasswordChanged,
    PasswordResetCompleted,
    PasswordResetRequired,
    SecondFactorRemoved,
    UserDisabled,
    UserLocked,
)

NAME = "reactions"
DEFAULT_GROUP = "secstate-reactions"

REVOKE_USER_SESSIONS = "revoke_user_sessions"
REVOKE_API_KEY_GRANTS = "revoke_api_key_grants"
RELOAD_SIGNING_KEYS = "reload_signing_keys"
NOTIFY_CUSTOMER = "notify_customer"
KINDS = (REVOKE_USER_SESSIONS, REVOKE_API_KEY_GRANTS, RELOAD_SIGNING_KEYS, NOTIFY_CUSTOMER)

TABLE = "reaction_actions"
TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        ce_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        target_kind TEXT NOT NULL,
        target TEXT NOT NULL,
        account_id TEXT,
        event_type TEXT NOT NULL,
        detail TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        log_position BIGINT NOT NULL,
        account_sequence BIGINT NOT NULL,
        queued_at TEXT NOT NULL,
        PRIMARY KEY (ce_id, kind)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_by_position ON {TABLE} (log_position, kind)",
)

# The session-revoking events, and the notifications' templates by payload model.
SESSION_REVOKING = (
    PasswordChanged,
    PasswordResetCompleted,
    PasswordResetRequired,
    UserLocked,
    UserDisabled,
)
NOTIFYING: dict[type[Any], str] = {
    SecondFactorRemoved: "second_factor_removed",
    ApiKeyCreated: "api_key_created",
    AllowlistEntryAdded: "allowlist_entry_added",
    AllowlistEntryRemoved: "allowlist_entry_removed",
    PasswordResetRequired: "password_reset_required",
}


@dataclass(frozen=True)
class Action:
    """One queued action, as ``secstate consume reactions --show`` lists it."""

    ce_id: str
    kind: str
    target_kind: str
    target: str
    account_id: str | None
    event_type: str
    detail: dict[str, Any]
    occurred_at: str
    log_position: int
    account_sequence: int
    queued_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_action(
    tx: Tx,
    delivered: Delivered[Any],
    kind: str,
    *,
    target_kind: str,
    target: str,
    detail: dict[str, Any],
) -> None:
    """Write one action; a second write of the same (event, kind) changes nothing."""
    event = delivered.event
    tx.execute(
        f"INSERT INTO {TABLE} (ce_id, kind, target_kind, target, account_id, event_type, "  # noqa: S608 - constant table name
        "detail, occurred_at, log_position, account_sequence, queued_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ce_id, kind) DO NOTHING",
        (
            delivered.ce_id,
            kind,
            target_kind,
            target,
            str(event.account_id) if event.account_id else None,
            event.type,
            json.dumps(detail, sort_keys=True, ensure_ascii=True),
            event.occurred_at.astimezone(UTC).isoformat(),
            delivered.position,
            delivered.sequence,
            datetime.now(UTC).isoformat(),
        ),
    )


def _because(delivered: Delivered[Any]) -> dict[str, Any]:
    """What happened, by whom: the part of every action's detail."""
    event = delivered.event
    return {
        "event": event.type,
        "actor_kind": event.actor_kind,
        "actor_id": event.actor_id,
        "request_id": event.request_id,
    }


def revoke_user_sessions(
    delivered: Delivered[
        PasswordChanged | PasswordResetCompleted | PasswordResetRequired | UserLocked | UserDisabled
    ],
    tx: Tx,
) -> None:
    """A user's credentials changed or the user was shut out: end every session."""
    detail = _because(delivered)
    reason = getattr(delivered.data, "reason", None)
    if reason is not None:
        detail["reason"] = reason
    queue_action(
        tx,
        delivered,
        REVOKE_USER_SESSIONS,
        target_kind="user",
        target=str(delivered.aggregate_id),
        detail=detail,
    )


def revoke_api_key_grants(delivered: Delivered[ApiKeyRevoked], tx: Tx) -> None:
    """A revoked key's cached grants must go at once, not when the cache expires."""
    queue_action(
        tx,
        delivered,
        REVOKE_API_KEY_GRANTS,
        target_kind="api_key",
        target=delivered.data.key_id,
        detail={**_because(delivered), "reason": delivered.data.reason},
    )


def reload_signing_keys(delivered: Delivered[DkimKeyActivated | DkimKeyRetired], tx: Tx) -> None:
    """The signers of a domain load its keys again (one became active, or retired)."""
    data = delivered.data
    detail = {
        **_because(delivered),
        "selector": data.selector,
        "change": "activated" if isinstance(data, DkimKeyActivated) else "retired",
    }
    if isinstance(data, DkimKeyRetired):
        detail["reason"] = data.reason
    queue_action(
        tx,
        delivered,
        RELOAD_SIGNING_KEYS,
        target_kind="dkim_domain",
        target=data.domain,
        detail=detail,
    )


def notify_customer(
    delivered: Delivered[
        SecondFactorRemoved
        | ApiKeyCreated
        | AllowlistEntryAdded
        | AllowlistEntryRemoved
        | PasswordResetRequired
    ],
    tx: Tx,
) -> None:
    """Tell the customer: the user for a user's event, the account's owners otherwise."""
    data = delivered.data
    template = NOTIFYING[type(data)]
    facts: dict[str, Any] = {}
    if isinstance(data, SecondFactorRemoved):
        facts = {"factor_id": data.factor_id, "factor_kind": data.kind, "reason": data.reason}
    elif isinstance(data, ApiKeyCreated):
        facts = {"key_id": data.key_id, "name": data.name, "display": data.display}
    elif isinstance(data, AllowlistEntryAdded):
        facts = {"entry_id": data.entry_id, "cidr": data.cidr, "label": data.label}
    elif isinstance(data, AllowlistEntryRemoved):
        facts = {"entry_id": data.entry_id, "cidr": data.cidr, "forced": data.forced}
    else:
        facts = {"reason": data.reason, "campaign_id": data.campaign_id}
    user_event = delivered.event.type.startswith("User.")
    if user_event or delivered.account_id is None:
        target_kind, target = "user", str(delivered.aggregate_id)
    else:
        target_kind, target = "account", str(delivered.account_id)
    queue_action(
        tx,
        delivered,
        NOTIFY_CUSTOMER,
        target_kind=target_kind,
        target=target,
        detail={**_because(delivered), "template": template, **facts},
    )


def build_app(store: ConsumerStore, name: str = NAME) -> ConsumerApp:
    """The reactions consumer over ``store``, every handler registered."""
    app = ConsumerApp(name, store=store, tables=TABLES)
    app.handles(*SESSION_REVOKING)(revoke_user_sessions)
    app.handles(ApiKeyRevoked)(revoke_api_key_grants)
    app.handles(DkimKeyActivated, DkimKeyRetired)(reload_signing_keys)
    app.handles(*NOTIFYING)(notify_customer)
    return app


def open_app(location: str | Path, name: str = NAME) -> ConsumerApp:
    """``build_app`` on the store at ``location`` (a SQLite path or a PostgreSQL URL)."""
    return build_app(ConsumerStore.open(location), name)


def list_actions(
    store: ConsumerStore,
    *,
    kind: str | None = None,
    account_id: str | None = None,
    limit: int | None = None,
) -> list[Action]:
    """The queued actions in log order (then by kind), optionally of one kind or account."""
    store.ensure_tables(TABLES)
    where: list[str] = []
    params: list[Any] = []
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if account_id is not None:
        where.append("account_id = ?")
        params.append(account_id)
    sql = (
        "SELECT ce_id, kind, target_kind, target, account_id, event_type, detail, "  # noqa: S608 - constant names, placeholders
        f"occurred_at, log_position, account_sequence, queued_at FROM {TABLE}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY log_position, kind"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    with store.reading() as tx:
        rows = tx.query_all(sql, params)
    return [
        Action(
            ce_id=str(r[0]),
            kind=str(r[1]),
            target_kind=str(r[2]),
            target=str(r[3]),
            account_id=None if r[4] is None else str(r[4]),
            event_type=str(r[5]),
            detail=json.loads(r[6]),
            occurred_at=str(r[7]),
            log_position=int(r[8]),
            account_sequence=int(r[9]),
            queued_at=str(r[10]),
        )
        for r in rows
    ]


__all__ = [
    "DEFAULT_GROUP",
    "KINDS",
    "NAME",
    "NOTIFY_CUSTOMER",
    "RELOAD_SIGNING_KEYS",
    "REVOKE_API_KEY_GRANTS",
    "REVOKE_USER_SESSIONS",
    "Action",
    "build_app",
    "list_actions",
    "notify_customer",
    "open_app",
    "reload_signing_keys",
    "revoke_api_key_grants",
    "revoke_user_sessions",
]
