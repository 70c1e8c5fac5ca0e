"""The ``state-replica`` consumer: every account's security state, built from the Kafka
topic alone into a database of its own, the way a downstream service keeps its view.

One handler folds each event into its account's or user's record
(``consumers.replica_fold``); records are stored as JSON beside the runtime's
bookkeeping, in the same transaction as the handled ``ce_id``, so a redelivered message
changes nothing. For the same events the records equal secstate's own state view's
(tests/test_state_replica.py compares them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.app import ConsumerApp
from consumers.delivery import Delivered
from consumers.replica_fold import ACCOUNT, FOLDS, Record, apply, record_of
from consumers.store import ConsumerStore, Tx

NAME = "state-replica"
ACCOUNTS = "replica_accounts"
USERS = "replica_users"
TABLES = (
    f"CREATE TABLE IF NOT EXISTS {ACCOUNTS} "
    "(account_id TEXT PRIMARY KEY, name TEXT NOT NULL, record TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {ACCOUNTS}_by_name ON {ACCOUNTS} (name)",
    f"CREATE TABLE IF NOT EXISTS {USERS} "
    "(user_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, record TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {USERS}_by_account ON {USERS} (account_id)",
)


class UnknownReplicaAccountError(LookupError):
    """The replica holds no account of that name (yet)."""


def _load(tx: Tx, table: str, ident: str) -> Record | None:
    column = "account_id" if table == ACCOUNTS else "user_id"
    row = tx.query_one(f"SELECT record FROM {table} WHERE {column} = ?", (ident,))  # noqa: S608 - constant table and column names
    return None if row is None else dict(json.loads(row[0]))


def _save(tx: Tx, table: str, ident: str, record: Record) -> None:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if table == ACCOUNTS:
        tx.execute(
            f"INSERT INTO {ACCOUNTS} (account_id, name, record) VALUES (?, ?, ?) "  # noqa: S608 - constant table name
            "ON CONFLICT (account_id) DO UPDATE SET name = excluded.name, record = excluded.record",
            (ident, record["name"], text),
        )
    else:
        tx.execute(
            f"INSERT INTO {USERS} (user_id, account_id, record) VALUES (?, ?, ?) "  # noqa: S608 - constant table name
            "ON CONFLICT (user_id) DO UPDATE SET record = excluded.record",
            (ident, record["account_id"], text),
        )


def fold_event(delivered: Delivered[Any], tx: Tx) -> None:
    """Fold one event into the record it changes, in the handler's transaction."""
    where = record_of(delivered.event)
    if where is None:
        return
    kind, ident = where
    table = ACCOUNTS if kind == ACCOUNT else USERS
    _save(tx, table, ident, apply(_load(tx, table, ident), delivered.event))


def build_app(store: ConsumerStore, name: str = NAME) -> ConsumerApp:
    """The replica over ``store``: one handler for every event that changes a record."""
    app = ConsumerApp(name, store=store, tables=TABLES)
    app.handles(*FOLDS)(fold_event)
    return app


def open_app(location: str | Path, name: str = NAME) -> ConsumerApp:
    """``build_app`` on the store at ``location`` (a SQLite path or a PostgreSQL URL)."""
    return build_app(ConsumerStore.open(location), name)


@dataclass(frozen=True)
class ReplicaAccount:
    """An account's record and its users' records, as the replica holds them."""

    account: Record
    users: list[Record]

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "users": self.users}


def replica_account(store: ConsumerStore, name: str) -> ReplicaAccount:
    """The account called ``name`` and its users (by username); UnknownReplicaAccountError
    if the replica has not seen it."""
    store.ensure_tables(TABLES)
    with store.reading() as tx:
        row = tx.query_one(f"SELECT account_id, record FROM {ACCOUNTS} WHERE name = ?", (name,))  # noqa: S608 - constant table name
        if row is None:
            raise UnknownReplicaAccountError(f"the replica holds no account named {name!r}")
        users = tx.query_all(f"SELECT record FROM {USERS} WHERE account_id = ?", (row[0],))  # noqa: S608 - constant table name
    records = sorted((json.loads(u[0]) for u in users), key=lambda r: r["username"])
    return ReplicaAccount(json.loads(row[1]), records)


def all_records(store: ConsumerStore) -> dict[str, dict[str, Record]]:
    """Every record the replica holds: ``{"accounts": {id: record}, "users": {...}}``."""
    store.ensure_tables(TABLES)
    with store.reading() as tx:
        accounts = tx.query_all(f"SELECT account_id, record FROM {ACCOUNTS}")  # noqa: S608 - constant table name
        users = tx.query_all(f"SELECT user_id, record FROM {USERS}")  # noqa: S608 - constant table name
    return {
        "accounts": {str(k): json.loads(v) for k, v in accounts},
        "users": {str(k): json.loads(v) for k, v in users},
    }


__all__ = [
    "NAME",
    "ReplicaAccount",
    "UnknownReplicaAccountError",
    "all_records",
    "build_app",
    "fold_event",
    "open_app",
    "replica_account",
]
