"""The state view's storage: one row per account and per user, each holding its record
as JSON, with the columns queries filter on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from domain.account import ApiKeyIndex
from domain.catalogue import event_type_name
from projections.errors import ProjectionFailedError
from projections.sql import Dialect, Tx
from projections.state.document import Record, user_status
from projections.state.fold import _K, _U, HANDLERS, NO_OP_CLASSES, Handler, _check_version
from projections.view import REBUILD_SUFFIX, View, compact_json

ACCOUNTS_TABLE = "state_accounts"
USERS_TABLE = "state_users"
_IN_CHUNK = 500  # bound on parameters per IN (...) list
# A rebuild keeps the records it wrote in memory up to this many (then reads them back).
_MAX_BUILT_RECORDS = 500_000
_dumps = compact_json()  # json.dumps(record, separators=(",", ":")), cheaper


# --- the view ---------------------------------------------------------------------------


class StateView(View):
    """Current security state per account and per user, as JSON records plus query columns.

    Per batch, each touched record is loaded once, changed in memory by every event of
    the batch, and written once at the end (``executemany`` upserts).
    """

    name: ClassVar[str] = "state"
    tables: ClassVar[tuple[str, ...]] = (ACCOUNTS_TABLE, USERS_TABLE)

    def __init__(self) -> None:
        super().__init__()
        # During a rebuild: the records as committed so far, by table (None otherwise).
        # Every batch of a rebuild would otherwise read back and parse the records it
        # touches; a rolled-back batch empties them (see rolled_back).
        self._built: dict[str, dict[str, Record]] | None = None
        # Aggregate id (as int) -> its text, the records' key (str(UUID) costs ~1 us).
        self._keys: dict[int, str] = {}

    def ddl(self, dialect: Dialect) -> list[str]:
        accounts, users = self.t(ACCOUNTS_TABLE), self.t(USERS_TABLE)
        statements = [
            f"CREATE TABLE {accounts} ("
            "account_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, "
            "record TEXT NOT NULL)",
            f"CREATE UNIQUE INDEX {self.i('state_accounts_name')} ON {accounts} (name)",
            f"CREATE TABLE {users} ("
            "user_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, username TEXT NOT NULL, "
            "email TEXT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, "
            "reset_required INTEGER NOT NULL, reset_campaign_id TEXT, "
            "password_changed_at TEXT, failed_logins INTEGER NOT NULL, last_login_at TEXT, "
            "confirmed_factors INTEGER NOT NULL, record TEXT NOT NULL)",
        ]
        # A rebuild's shadow gets its query indexes once it is full (after_build): cheaper
        # than keeping four indexes up to date on every upsert.
        if self.suffix != REBUILD_SUFFIX:
            statements.extend(self._user_indexes())
        return statements

    def _user_indexes(self) -> list[str]:
        users = self.t(USERS_TABLE)
        return [
            f"CREATE INDEX {self.i('state_users_account')} ON {users} (account_id)",
            f"CREATE INDEX {self.i('state_users_username')} ON {users} (username)",
            f"CREATE INDEX {self.i('state_users_status')} ON {users} (status)",
            f"CREATE INDEX {self.i('state_users_reset')} ON {users} "
            "(reset_required, reset_campaign_id)",
        ]

    def after_build(self, tx: Tx) -> None:
        for statement in self._user_indexes():
            tx.execute(statement)

    def build_started(self) -> None:
        self._built = {ACCOUNTS_TABLE: {}, USERS_TABLE: {}}

    def build_ended(self) -> None:
        self._built = None

    def rolled_back(self) -> None:
        if self._built is not None:
            self._built = {ACCOUNTS_TABLE: {}, USERS_TABLE: {}}

    # --- applying events -----------------------------------------------------------------

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        # Every record in these two dicts is touched by the batch, so all are written back.
        accounts: dict[str, Record] = {}
        users: dict[str, Record] = {}
        plan: list[tuple[int, Any, str, dict[str, Record], Handler, bool]] = []
        wanted_accounts: set[str] = set()
        wanted_users: set[str] = set()
        keys = self._keys
        for position, event in events:
            entry = HANDLERS.get(type(event))
            if entry is None:
                if type(event) in NO_OP_CLASSES:
                    continue
                raise ProjectionFailedError(
                    self.name,
                    position,
                    event_type_name(event),
                    LookupError(f"the state view has no handler for {event_type_name(event)}"),
                )
            kind, handler, creates = entry
            subject = event.account_id if kind == _K else event.originator_id
            originator = subject.int
            key = keys.get(originator)
            if key is None:
                if len(keys) >= _MAX_BUILT_RECORDS:
                    keys.clear()
                key = keys[originator] = str(subject)
            if kind != _U:
                plan.append((position, event, key, accounts, handler, creates))
                if not creates:
                    wanted_accounts.add(key)
            else:
                plan.append((position, event, key, users, handler, creates))
                if not creates:
                    wanted_users.add(key)

        accounts.update(self._records(tx, ACCOUNTS_TABLE, "account_id", wanted_accounts))
        users.update(self._records(tx, USERS_TABLE, "user_id", wanted_users))
        for position, event, key, records, handler, creates in plan:
            record = records.get(key)
            try:
                if record is None and not creates:
                    raise LookupError(f"no record {key} in the state view")
                # An ApiKeyIndex event changes its account's record, not its own.
                own = not isinstance(event, ApiKeyIndex.Event)
                if own and record is not None:
                    _check_version(record, event)
                records[key] = handler(record, event)
                if own:
                    records[key]["version"] = event.originator_version
            except Exception as e:
                raise ProjectionFailedError(self.name, position, event_type_name(event), e) from e

        self._write_accounts(tx, accounts.values())
        self._write_users(tx, users.values())
        if self._built is not None:
            # Kept as they will be once this transaction commits (rolled_back undoes it).
            for table, records in ((ACCOUNTS_TABLE, accounts), (USERS_TABLE, users)):
                built = self._built[table]
                if len(built) + len(records) > _MAX_BUILT_RECORDS:
                    built.clear()
                built.update(records)

    def _records(self, tx: Tx, table: str, key_column: str, keys: set[str]) -> dict[str, Record]:
        """The stored records of ``keys`` (those that exist), to be changed in place."""
        if self._built is None:
            return self._load(tx, self.t(table), key_column, keys)
        built = self._built[table]
        found = {key: built[key] for key in keys if key in built}
        if len(found) < len(keys):
            found.update(self._load(tx, self.t(table), key_column, keys - found.keys()))
        return found

    @staticmethod
    def _load(tx: Tx, table: str, key_column: str, keys: set[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        ordered = sorted(keys)
        for start in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, text in tx.query_all(
                f"SELECT {key_column}, record FROM {table} WHERE {key_column} IN ({marks})",  # noqa: S608 - constant table and column names
                chunk,
            ):
                found[key] = json.loads(text)
        return found

    def _write_accounts(self, tx: Tx, records: Iterable[Record]) -> None:
        rows = [(r["id"], r["name"], r["kind"], _dumps(r)) for r in records]
        tx.executemany(
            f"INSERT INTO {self.t(ACCOUNTS_TABLE)} (account_id, name, kind, record) "  # noqa: S608 - constant table names
            "VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
            "name = excluded.name, kind = excluded.kind, record = excluded.record",
            rows,
        )

    def _write_users(self, tx: Tx, records: Iterable[Record]) -> None:
        rows = [
            (
                r["id"],
                r["account_id"],
                r["username"],
                r["email"],
                r["role"],
                user_status(r),
                1 if r["reset_required"] else 0,
                r["reset_campaign_id"],
                r["password_changed_at"],
                r["failed_logins"],
                r["last_login_at"],
                sum(1 for f in r["factors"].values() if f["confirmed_at"] is not None),
                _dumps(r),
            )
            for r in records
        ]
        tx.executemany(
            f"INSERT INTO {self.t(USERS_TABLE)} (user_id, account_id, username, email, role, "  # noqa: S608 - constant table names
            "status, reset_required, reset_campaign_id, password_changed_at, failed_logins, "
            "last_login_at, confirmed_factors, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "account_id = excluded.account_id, username = excluded.username, "
            "email = excluded.email, role = excluded.role, status = excluded.status, "
            "reset_required = excluded.reset_required, "
            "reset_campaign_id = excluded.reset_campaign_id, "
            "password_changed_at = excluded.password_changed_at, "
            "failed_logins = excluded.failed_logins, last_login_at = excluded.last_login_at, "
            "confirmed_factors = excluded.confirmed_factors, record = excluded.record",
            rows,
        )
