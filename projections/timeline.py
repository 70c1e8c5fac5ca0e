"""The forensic timeline: one row per ledger event, indexed for investigators' filters.

Each row keeps who (actor), from where (source IP, user agent, request id), when
(occurred and recorded, as integer microseconds since the epoch), about whom (account,
user) and what (event type, a one-line summary, public details). Only the fields the
catalogue (``domain.catalogue``) lists as public reach a row, through ``domain.public``.

Source IPs are also stored as 16 big-endian bytes (IPv4 as IPv4-mapped IPv6), so one
index answers CIDR queries for both families as a byte range on SQLite and PostgreSQL.

Staff access to internal systems names the customer accounts whose data was touched;
those go to a side table so a query for an account also finds staff reads of its data.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import operator
import os
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from domain.account import Account, ApiKeyIndex
from domain.catalogue import catalogue_entry, event_type_name
from domain.public import public_fields
from domain.summaries import Names, Summariser
from domain.user import User
from projections.errors import ProjectionFailedError
from projections.sql import Dialect, Tx, ViewDB
from projections.view import View, compact_json

TIMELINE = "timeline"
TOUCH = "timeline_touch"
IDS = "timeline_ids"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)

# json.dumps(details, default=str, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
_encode_json = compact_json(ensure_ascii=False, sort_keys=True, default=str)


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def ip_to_bytes(ip: str) -> bytes:
    """16 big-endian bytes; IPv4 as IPv4-mapped IPv6 (``::ffff:a.b.c.d``) so both sort together.

    Raises ValueError for text that is not an IP address.
    """
    try:
        if ":" in ip:
            return socket.inet_pton(socket.AF_INET6, ip)
        return _V4_MAPPED + socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        pass
    addr = ipaddress.ip_address(ip)  # the slow path: scoped IPv6 and other rarities
    return _V4_MAPPED + addr.packed if addr.version == 4 else addr.packed


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_US


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class _Spec:
    """What the view needs to know about one event class, computed once per class."""

    cls: type
    type_name: str
    family: str  # "Account", "User", "ApiKeyIndex" or another aggregate's name
    keep: tuple[str, ...]
    derived: tuple[tuple[str, str, Callable[[Any], Any]], ...]
    summarise: Summariser
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    # The details of events whose kept values are all plain (see _plain_details), or None.
    plain: Callable[[dict[str, Any]], str | None] | None = None
    json_cache: dict[tuple[Any, ...], str] = dataclasses.field(default_factory=dict, compare=False)


# Events about an API key whose summary shows the key's name.
KEY_NAMING_CLASSES: frozenset[type] = frozenset(
    {Account.ApiKeyRevoked, ApiKeyIndex.Used, ApiKeyIndex.UseRefused}
)
# Events that name something (an account, a user, an API key): always go the slow way.
NAMING_CLASSES: frozenset[type] = frozenset(
    {User.Registered, Account.Opened, Account.ApiKeyCreated}
)
# Every event class the timeline treats apart from the rest (see ``_row``, ``_subject``).
HANDLED_CLASSES: frozenset[type] = (
    KEY_NAMING_CLASSES | NAMING_CLASSES | {Account.MemberAdded, User.InternalSystemAccessed}
)


def _spec_for(cls: type) -> _Spec:
    entry = catalogue_entry(cls)
    type_name, family, keep, derived = entry.type_name, entry.family, entry.public, entry.derived
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    if not keep:
        values = lambda data: ()  # noqa: E731
    elif len(keep) == 1:
        only = keep[0]
        values = lambda data: (data[only],)  # noqa: E731 - itemgetter of one key is no tuple
    else:
        values = operator.itemgetter(*keep)
    plain = _plain_details(keep) if keep and not derived else None
    return _Spec(cls, type_name, family, keep, derived, entry.summary, values, plain)


_encode_text = json.encoder.encode_basestring  # the encoder's own, for ensure_ascii=False


def _plain_details(keep: tuple[str, ...]) -> Callable[[dict[str, Any]], str | None]:
    """The details JSON (``_encode_json`` of the kept fields, keys sorted) written out
    directly when every value is a str, None, bool, int or UUID, the types of nearly
    every event; None for anything else, which goes the general way. Same text: strings
    through the encoder's own escaping, ints by ``int.__repr__`` as the encoder does,
    UUIDs as ``str`` (the encoder's ``default``)."""
    order = sorted(keep)
    heads = tuple(
        ("{" if k == 0 else ",") + _encode_text(name) + ":" for k, name in enumerate(order)
    )
    fields = tuple(zip(heads, order, strict=True))
    uuid_type, text_type, int_type, bool_type = uuid.UUID, str, int, bool

    def encode(data: dict[str, Any]) -> str | None:
        parts = []
        for head, name in fields:
            value = data[name]
            kind = type(value)
            if kind is text_type:
                parts.append(head + _encode_text(value))
            elif value is None:
                parts.append(head + "null")
            elif kind is bool_type:
                parts.append(head + ("true" if value else "false"))
            elif kind is int_type:
                parts.append(head + int.__repr__(value))
            elif kind is uuid_type:
                parts.append(head + _encode_text(str(value)))
            else:
                return None
        parts.append("}")
        return "".join(parts)

    return encode


INSERT_COLUMNS = (
    "position",
    "occurred_us",
    "recorded_us",
    "event_type",
    "account",
    "account_id",
    "username",
    "actor_kind",
    "actor_id",
    "source_ip",
    "ip_bytes",
    "user_agent",
    "request_id",
    "summary",
    "details",
    "aggregate_id",
    "version",
)


# Name -> definition on the timeline table. Partial indexes: rows without the column
# cost nothing to write, and ``col = ?`` implies ``col IS NOT NULL`` on both databases.
# Every index ends with the position: a query can take the positions of its matches from
# the index alone (an index-only scan on PostgreSQL; SQLite's rowid is the position),
# sort those, and read only the page's rows (see timeline_query).
TIMELINE_INDEXES: dict[str, str] = {
    "tl_account": "(account, position) WHERE account IS NOT NULL",
    "tl_username": "(username, position) WHERE username IS NOT NULL",
    "tl_actor": "(actor_kind, actor_id, position)",
    "tl_ip": "(ip_bytes, position) WHERE ip_bytes IS NOT NULL",
    "tl_type_time": "(event_type, occurred_us, position)",
    "tl_time": "(occurred_us, position)",
}
# Indexes of earlier versions, dropped when the ones above are created.
OBSOLETE_INDEXES = ("tl_type", "tl_occurred")
_TOKENED = re.compile(r"(.+)_[0-9a-f]{8}")
# Helper threads SQLite's sorter may use while the timeline's indexes are built.
INDEX_SORTER_THREADS = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
# Below this many rows any plan is fast: statistics are not worth refreshing.
STATS_MIN_ROWS = 10_000


class TimelineView(View):
    """One row per event, every filter an investigator needs backed by an index."""

    name: ClassVar[str] = "timeline"
    tables: ClassVar[tuple[str, ...]] = (TIMELINE, TOUCH, IDS)

    def __init__(self) -> None:
        super().__init__()
        self._specs: dict[type, _Spec] = {}
        # id -> (name, account id): accounts, users and API keys by their ids. Names of a
        # given id never change (ids derive from names), so this cache never goes stale.
        self._names: dict[str, tuple[str, str | None] | None] = {}
        self._ip_bytes: dict[str, bytes] = {}
        # Aggregate (UUID as int) -> (aggregate id, username, account id, account name).
        self._subjects: dict[int, tuple[str, str | None, str | None, str | None]] = {}

    # --- schema -----------------------------------------------------------------------
    # The timeline's secondary indexes are not in ``ddl``: a fresh build (first catch-up,
    # or a rebuild's shadow tables) fills the bare table and indexes it once it reaches
    # the head, which at a million rows is ~8x faster than maintaining six indexes row by
    # row. A rebuild calls ``after_build`` before its swap; a follower calls
    # ``caught_up`` after each catch-up that applied events; the CLI calls
    # ``ensure_indexes`` before querying. The last two look first and run DDL only for
    # what is missing, under the store's setup lock (``ViewDB.setup_transaction``).

    def ddl(self, dialect: Dialect) -> list[str]:
        t, touch, ids, i = self.t(TIMELINE), self.t(TOUCH), self.t(IDS), self.i
        # SQLite: the rowid itself. PostgreSQL: a named constraint, because a renamed
        # table keeps its constraint names and the next rebuild would reuse the default.
        pk = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGINT NOT NULL"
        pk_constraint = (
            "" if dialect == "sqlite" else f",\n CONSTRAINT {i('tl_pk')} PRIMARY KEY (position)"
        )
        big = "INTEGER" if dialect == "sqlite" else "BIGINT"
        blob = "BLOB" if dialect == "sqlite" else "BYTEA"
        return [
            f"""CREATE TABLE {t} (
                position {pk},
                occurred_us {big} NOT NULL,
                recorded_us {big} NOT NULL,
                event_type TEXT NOT NULL,
                account TEXT,
                account_id TEXT,
                username TEXT,
                actor_kind TEXT NOT NULL,
                actor_id TEXT NOT NULL,
                source_ip TEXT,
                ip_bytes {blob},
                user_agent TEXT,
                request_id TEXT,
                summary TEXT NOT NULL,
                details TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version {big} NOT NULL{pk_constraint}
            )""",
            f"""CREATE TABLE {touch} (
                position {big} NOT NULL,
                account TEXT NOT NULL,
                CONSTRAINT {i("tl_touch_pk")} PRIMARY KEY (position, account)
            )""",
            f"CREATE INDEX {i('tl_touch_account')} ON {touch} (account, position)",
            f"""CREATE TABLE {ids} (
                id TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                account_id TEXT,
                CONSTRAINT {i("tl_ids_pk")} PRIMARY KEY (id)
            )""",
            f"CREATE INDEX {i('tl_ids_name')} ON {ids} (kind, name)",
        ]

    def _indexes(self, tx: Tx) -> dict[str, str]:
        """The (current) table's indexes: name without its build token -> full name."""
        # Index names carry a per-build token (see View.i): ``<name>_<8 hex digits>``.
        found = {}
        for name in tx.index_names(self.t(TIMELINE)):
            match = _TOKENED.fullmatch(name)
            if match:
                found[match.group(1)] = name
        return found

    def missing_indexes(self, tx: Tx) -> list[str]:
        """Names of the timeline indexes the (current) table lacks."""
        present = self._indexes(tx)
        return [name for name in TIMELINE_INDEXES if name not in present]

    def obsolete_indexes(self, tx: Tx) -> list[str]:
        """Full names of indexes an earlier version made that are no longer used."""
        present = self._indexes(tx)
        return [present[name] for name in OBSOLETE_INDEXES if name in present]

    def create_missing_indexes(self, tx: Tx) -> list[str]:
        missing = self.missing_indexes(tx)
        if missing:
            # Index names carry a per-instance token, so two processes indexing at once
            # would each create a set. The live table's callers hold the setup lock
            # already; a rebuild's shadow is its own. This lock also keeps writers out
            # while the indexes are built (readers are not blocked). Then look again.
            tx.lock_for_indexing(self.t(TIMELINE))
            missing = self.missing_indexes(tx)
        if missing:
            # SQLite's sorter may hand runs to helper threads (off by default): an index
            # build over a million rows is mostly sorting, ~30% faster with two.
            with tx.pragmas(threads=INDEX_SORTER_THREADS):
                for name in missing:
                    tx.execute(
                        f"CREATE INDEX {self.i(name)} ON {self.t(TIMELINE)} "
                        f"{TIMELINE_INDEXES[name]}"
                    )
            for name in self.obsolete_indexes(tx):
                tx.execute(f"DROP INDEX {name}")
            self.analyze(tx)
        return missing

    def analyze(self, tx: Tx) -> None:
        """Refresh planner statistics: without them SQLite may sort a million rows by
        position when walking the primary key would stop after fifty."""
        tx.analyze(self.t(TIMELINE))

    def _stats_stale(self, tx: Tx) -> bool:
        """Grown tenfold since last analyzed (never on PostgreSQL, whose autovacuum does)?"""
        row = tx.query_one(f"SELECT MAX(position) FROM {self.t(TIMELINE)}")  # noqa: S608 - the view's own constant table and column names
        size = int(row[0] or 0)
        return size >= STATS_MIN_ROWS and tx.statistics_stale(self.t(TIMELINE), size)

    def after_build(self, tx: Tx) -> None:
        """A rebuild holds the whole log: index it once, before the swap."""
        self.create_missing_indexes(tx)

    def ensure_indexes(self, db: ViewDB) -> list[str]:
        """Create whatever index the live timeline lacks and refresh stale statistics;
        returns the names of the indexes created. One read when nothing is to be done;
        otherwise the work runs under the store's setup lock."""
        self.suffix = ""
        with db.reading() as tx:
            missing = self.missing_indexes(tx)
            stale = not missing and self._stats_stale(tx)
        if not missing and not stale:
            return []
        with db.setup_transaction() as tx:
            created = self.create_missing_indexes(tx)
            if not created:
                self.analyze(tx)
            return created

    def caught_up(self, db: ViewDB) -> None:
        """At the head: index the table if it is not (a first catch-up filled it bare)."""
        self.ensure_indexes(db)

    # --- applying events --------------------------------------------------------------

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        rows: list[tuple[Any, ...]] = []
        touches: list[tuple[int, str]] = []
        new_ids: list[tuple[str, str, str, str | None]] = []
        for position, event in events:
            spec = self._specs.get(type(event))
            if spec is None:
                spec = self._specs[type(event)] = _spec_for(type(event))
            try:
                rows.append(self._row(tx, position, event, spec, touches, new_ids))
            except Exception as e:
                raise ProjectionFailedError(self.name, position, spec.type_name, e) from e
        if new_ids:
            tx.executemany(
                f"INSERT INTO {self.t(IDS)} (id, kind, name, account_id) VALUES (?, ?, ?, ?) "  # noqa: S608 - the view's own constant table and column names
                "ON CONFLICT (id) DO NOTHING",
                new_ids,
            )
        # PostgreSQL's COPY: under half the time of INSERTs (~9 against ~21 us a row at a
        # million, client and server); a conflict still fails the batch.
        tx.copy_rows(self.t(TIMELINE), INSERT_COLUMNS, rows)
        if touches:
            tx.executemany(
                f"INSERT INTO {self.t(TOUCH)} (position, account) VALUES (?, ?)",  # noqa: S608 - the view's own constant table and column names
                touches,
            )

    def _row(
        self,
        tx: Tx,
        position: int,
        event: Any,
        spec: _Spec,
        touches: list[tuple[int, str]],
        new_ids: list[tuple[str, str, str, str | None]],
    ) -> tuple[Any, ...]:
        # Hot path (millions of events on a rebuild): one cache hit gives the subject.
        data = event.__dict__
        cls = spec.cls
        subject = self._subjects.get(event.originator_id.int)
        if subject is None or cls in NAMING_CLASSES:
            subject = self._subject(tx, event, spec, new_ids)
        aggregate_id, username, account_id, account = subject

        key_name = None
        if cls is Account.MemberAdded:
            username = event.username
        elif cls in KEY_NAMING_CLASSES:
            known = self._lookup(tx, event.key_id)
            key_name = known[0] if known else None
        elif cls is User.InternalSystemAccessed:
            touches.extend((position, a) for a in event.customer_accounts if a != account)

        ip = data["source_ip"]
        if ip:
            ip_bytes = self._ip_bytes.get(ip)
            if ip_bytes is None:
                if len(self._ip_bytes) > 100_000:
                    self._ip_bytes.clear()
                ip_bytes = self._ip_bytes[ip] = ip_to_bytes(ip)
        else:
            ip_bytes = None

        try:
            occurred_us = (data["occurred_at"] - EPOCH) // ONE_US
            recorded_us = (data["timestamp"] - EPOCH) // ONE_US
        except TypeError:  # naive datetimes: taken as UTC
            occurred_us, recorded_us = to_micros(data["occurred_at"]), to_micros(data["timestamp"])

        return (
            position,
            occurred_us,
            recorded_us,
            spec.type_name,
            account,
            account_id,
            username,
            data["actor_kind"],
            data["actor_id"],
            ip,
            ip_bytes,
            data["user_agent"],
            data["request_id"],
            spec.summarise(event, Names(account, username, key_name)),
            self._details(event, data, spec),
            aggregate_id,
            data["originator_version"],
        )

    def _details(self, event: Any, data: dict[str, Any], spec: _Spec) -> str:
        """Public fields as JSON; repeated value combinations are encoded once."""
        if not spec.keep and not spec.derived:
            return "{}"
        if spec.plain is not None:
            text = spec.plain(data)
            if text is not None:
                return text
        values = spec.values(data)
        try:
            return spec.json_cache[values]
        except KeyError:
            pass
        except TypeError:  # unhashable values (lists): encode every time
            values = ()
        text = _encode_json(public_fields(event))
        if values and not spec.derived:
            if len(spec.json_cache) > 4096:
                spec.json_cache.clear()
            spec.json_cache[values] = text
        return text

    def _subject(
        self, tx: Tx, event: Any, spec: _Spec, new_ids: list[tuple[str, str, str, str | None]]
    ) -> tuple[str, str | None, str | None, str | None]:
        """(aggregate id, username, account id, account name) of the event's aggregate,
        learning names from the events that introduce them."""
        aggregate_id = str(event.originator_id)
        cls = spec.cls
        username = account_id = account = None
        if spec.family == "User":
            if cls is User.Registered:
                username, account_id = event.username, str(event.account_id)
                self._remember(new_ids, aggregate_id, "user", event.username, account_id)
            else:
                known = self._lookup(tx, aggregate_id)
                if known is not None:
                    username, account_id = known
            if account_id is not None:
                account = self._account_name(tx, account_id)
        elif spec.family == "Account":
            account_id = aggregate_id
            if cls is Account.Opened:
                account = event.name
                self._remember(new_ids, aggregate_id, "account", event.name, None)
            else:
                account = self._account_name(tx, account_id)
            if cls is Account.ApiKeyCreated:
                self._remember(new_ids, event.key_id, "api_key", event.name, account_id)
        elif spec.family == "ApiKeyIndex":
            account_id = str(event.account_id)
            account = self._account_name(tx, account_id)
        subject = (aggregate_id, username, account_id, account)
        if len(self._subjects) > 200_000:
            self._subjects.clear()
        self._subjects[event.originator_id.int] = subject
        return subject

    # --- names ------------------------------------------------------------------------

    def _remember(
        self,
        new_ids: list[tuple[str, str, str, str | None]],
        ident: str,
        kind: str,
        name: str,
        account_id: str | None,
    ) -> None:
        self._names[ident] = (name, account_id)
        new_ids.append((ident, kind, name, account_id))

    def _lookup(self, tx: Tx, ident: str) -> tuple[str, str | None] | None:
        if ident in self._names:
            return self._names[ident]
        row = tx.query_one(f"SELECT name, account_id FROM {self.t(IDS)} WHERE id = ?", (ident,))  # noqa: S608 - the view's own constant table and column names
        found = (str(row[0]), row[1]) if row else None
        self._names[ident] = found
        return found

    def _account_name(self, tx: Tx, account_id: str) -> str | None:
        known = self._lookup(tx, account_id)
        return known[0] if known else None


__all__ = [
    "TimelineView",
    "event_type_name",
    "from_micros",
    "ip_to_bytes",
    "to_micros",
]
