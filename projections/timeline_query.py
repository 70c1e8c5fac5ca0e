"""Querying the forensic timeline: filters that combine, keyset pagination, export shapes.

Every filter maps onto an index of the ``timeline`` view; values always go to the
database as parameters. ``parse_filter`` checks all inputs at once and raises one
``InvalidCommandError`` naming every bad one.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from domain.catalogue import CATALOGUE
from domain.context import Actor, ActorKind
from domain.errors import InvalidCommandError
from domain.rules import normalise_ip, normalise_network
from domain.text import check_actor_id
from domain.values import natural_id
from projections.sql import Dialect, ViewDB
from projections.timeline import IDS, TIMELINE, TOUCH, from_micros, ip_to_bytes, to_micros

Order = Literal["asc", "desc"]
ORDERS: tuple[Order, ...] = ("asc", "desc")
MAX_PAGE = 1000
# Positions walked in key order before falling back on a filter's index (see _wants_probe).
PROBE_WINDOW = 5_000
TIMESTAMP_DESC = "Event Occurred"

_ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{1,127}$")
# IPv4-mapped IPv6 (::ffff:0:0/96): where IPv4 addresses live in the 16-byte form.
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


# --- filters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IpRange:
    """An address or network as an inclusive range of 16-byte keys."""

    text: str
    low: bytes
    high: bytes
    exclude_v4: bool  # an IPv6 network spanning the IPv4-mapped range means IPv6 only


@dataclass(frozen=True)
class TimelineFilter:
    account: str | None = None
    user: str | None = None
    actor_kind: str | None = None
    actor_id: str | None = None
    ip: IpRange | None = None
    types: tuple[str, ...] = ()  # exact event type names, resolved from the patterns
    since_us: int | None = None
    until_us: int | None = None
    limit: int | None = 50  # None: no limit
    after: int | None = None
    order: Order = "asc"


MAX_POSITION = 2**63 - 1  # what a SQLite INTEGER or PostgreSQL bigint holds


def known_event_types() -> list[str]:
    """Every event type name of secstate's aggregates (``User.LoginFailed`` style)."""
    return sorted(entry.type_name for entry in CATALOGUE.values())


def resolve_types(patterns: Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """Exact type names matching the glob patterns (case-insensitive), and the problems."""
    known = known_event_types()
    lowered = {name.lower(): name for name in known}
    chosen: dict[str, None] = {}
    problems = []
    for raw in patterns:
        pattern = raw.strip()
        if not pattern:
            problems.append("--type: empty pattern")
            continue
        if len(pattern) > 100:
            problems.append("--type: a pattern is longer than 100 characters")
            continue
        matched = [lowered[n] for n in fnmatch.filter(lowered, pattern.lower())]
        if not matched:
            problems.append(
                f"--type: {pattern!r} matches no event type (known: {', '.join(known)})"
            )
        chosen.update(dict.fromkeys(sorted(matched)))
    return tuple(chosen), problems


def parse_time(text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is taken as UTC. ValueError if it
    is not one, or lies outside what UTC can hold (year 1 minus an offset, say)."""
    value = text.strip()
    if len(value) > 64:
        raise ValueError("too long for a time")
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("outside the years 1 to 9999 in UTC") from None


def parse_ip(text: str) -> IpRange:
    """An address (``203.0.113.7``) or a network (``2001:db8::/32``); ValueError if bad."""
    value = text.strip()[:100]
    # One form for addresses everywhere (domain.rules): ::ffff:198.51.100.0/120 is the
    # IPv4 network 198.51.100.0/24, as the ledger stores and the allowlist checks it.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    if "/" in value:
        try:
            network = normalise_network(value, strict=True)
        except ValueError as e:
            if "host bits set" in str(e):
                fixed = normalise_network(value, strict=False)
                raise ValueError(f"{value!r} has host bits set; did you mean {fixed}?") from None
            raise ValueError(f"{value!r} is not a valid CIDR network: {e}") from None
    else:
        try:
            network = ipaddress.ip_network(normalise_ip(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address or network") from None
    low = ip_to_bytes(str(network.network_address))
    high = ip_to_bytes(str(network.broadcast_address))
    exclude_v4 = (
        network.version == 6 and network.overlaps(_V4_MAPPED) and not network.subnet_of(_V4_MAPPED)
    )
    return IpRange(str(network), low, high, exclude_v4)


def parse_actor(text: str) -> tuple[str | None, str]:
    """``KIND:ID`` (e.g. ``staff:e-042``) or a bare ``ID`` (any kind); ValueError if bad."""
    value = text.strip()
    if not value:
        raise ValueError("actor is empty")
    if ":" not in value:
        return None, check_actor_id(value)
    actor = Actor.parse(value)
    return actor.kind.value, actor.id


def parse_filter(
    *,
    account: str | None = None,
    user: str | None = None,
    actor: str | None = None,
    ip: str | None = None,
    types: Sequence[str] = (),
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    limit: int | None = 50,
    after: int | None = None,
    order: str = "asc",
) -> TimelineFilter:
    """Check every input and build a filter; ``InvalidCommandError`` lists all problems."""
    problems: list[str] = []
    if account is not None:
        account = account.strip().lower()
        if not _ACCOUNT_NAME.match(account):
            problems.append(f"--account: {account!r} is not a valid account name")
    if user is not None:
        user = user.strip()
        if not _USERNAME.match(user):
            problems.append(f"--user: {user!r} is not a valid username")
    actor_kind = actor_id = None
    if actor is not None:
        try:
            actor_kind, actor_id = parse_actor(actor)
        except ValueError as e:
            problems.append(f"--actor: {e}")
    ip_range = None
    if ip is not None:
        try:
            ip_range = parse_ip(ip)
        except ValueError as e:
            problems.append(f"--ip: {e}")
    type_names, type_problems = resolve_types(types)
    problems.extend(type_problems)
    bounds: dict[str, datetime] = {}
    for label, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if isinstance(value, datetime):
            bounds[label] = value if value.tzinfo else value.replace(tzinfo=UTC)
            continue
        try:
            bounds[label] = parse_time(value)
        except ValueError:
            problems.append(
                f"--{label}: {value!r} is not an ISO 8601 time (e.g. 2015-06-01 or "
                "2015-06-01T12:00:00Z)"
            )
    if "since" in bounds and "until" in bounds and bounds["since"] > bounds["until"]:
        problems.append(
            f"--since ({bounds['since'].isoformat()}) is after --until "
            f"({bounds['until'].isoformat()})"
        )
    if limit is not None and not 0 <= limit <= MAX_POSITION:
        problems.append(f"--limit: must be 0 (no limit) or a positive count, got {limit}")
    if after is not None and not 0 <= after <= MAX_POSITION:
        problems.append(f"--after: must be a position (0 or more), got {after}")
    if order not in ORDERS:
        problems.append(f"--order: must be asc or desc, got {order!r}")
    if problems:
        raise InvalidCommandError("timeline query", problems)
    return TimelineFilter(
        account=account,
        user=user,
        actor_kind=actor_kind,
        actor_id=actor_id,
        ip=ip_range,
        types=type_names,
        since_us=to_micros(bounds["since"]) if "since" in bounds else None,
        until_us=to_micros(bounds["until"]) if "until" in bounds else None,
        limit=limit or None,
        after=after,
        order="desc" if order == "desc" else "asc",
    )


# --- results ------------------------------------------------------------------------------

COLUMNS = (
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
    "user_agent",
    "request_id",
    "summary",
    "details",
    "aggregate_id",
    "version",
)


@dataclass(frozen=True)
class TimelineEntry:
    position: int
    occurred_at: datetime
    recorded_at: datetime
    event_type: str
    account: str | None
    account_id: str | None
    username: str | None
    actor_kind: str
    actor_id: str
    source_ip: str | None
    user_agent: str | None
    request_id: str | None
    summary: str
    details: dict[str, Any]
    aggregate_id: str
    version: int

    @property
    def actor(self) -> str:
        return f"{self.actor_kind}:{self.actor_id}"

    @property
    def occurred_us(self) -> int:
        return to_micros(self.occurred_at)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> TimelineEntry:
        return cls(
            position=int(row[0]),
            occurred_at=from_micros(int(row[1])),
            recorded_at=from_micros(int(row[2])),
            event_type=row[3],
            account=row[4],
            account_id=row[5],
            username=row[6],
            actor_kind=row[7],
            actor_id=row[8],
            source_ip=row[9],
            user_agent=row[10],
            request_id=row[11],
            summary=row[12],
            details=json.loads(row[13]),
            aggregate_id=row[14],
            version=int(row[15]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, times as ISO 8601 UTC."""
        return {
            "position": self.position,
            "occurred_at": self.occurred_at.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "event_type": self.event_type,
            "account": self.account,
            "account_id": self.account_id,
            "username": self.username,
            "actor": self.actor,
            "actor_kind": self.actor_kind,
            "actor_id": self.actor_id,
            "source_ip": self.source_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "summary": self.summary,
            "details": self.details,
            "aggregate_id": self.aggregate_id,
            "version": self.version,
        }

    def to_timesketch(self) -> dict[str, Any]:
        """Timesketch's required fields first (message, datetime, timestamp_desc,
        timestamp in microseconds), then ours, flat (details as a JSON string)."""
        ours = self.to_dict()
        ours["details"] = json.dumps(self.details, sort_keys=True, ensure_ascii=False)
        return {
            "message": self.summary,
            "datetime": self.occurred_at.isoformat(),
            "timestamp_desc": TIMESTAMP_DESC,
            "timestamp": self.occurred_us,
            "data_type": "secstate:ledger:event",
            **ours,
        }


FLAT_FIELDS = (
    "position",
    "occurred_at",
    "recorded_at",
    "event_type",
    "account",
    "account_id",
    "username",
    "actor",
    "actor_kind",
    "actor_id",
    "source_ip",
    "user_agent",
    "request_id",
    "summary",
    "details",
    "aggregate_id",
    "version",
)
TIMESKETCH_FIELDS = (
    "message",
    "datetime",
    "timestamp_desc",
    "timestamp",
    "data_type",
    *FLAT_FIELDS,
)


def flat_row(entry: TimelineEntry) -> dict[str, Any]:
    """For CSV: ``details`` as a JSON string."""
    row = entry.to_dict()
    row["details"] = json.dumps(entry.details, sort_keys=True, ensure_ascii=False)
    return row


# --- running a query ------------------------------------------------------------------------


@dataclass
class _Sql:
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, condition: str, *params: Any) -> None:
        self.where.append(condition)
        self.params.extend(params)


def _conditions(flt: TimelineFilter, username: str | None, *, no_index: bool = False) -> _Sql:
    """Every filter but the account's, on alias ``t``.

    ``no_index`` (SQLite only) prefixes columns with unary ``+``, which keeps the planner
    from using their indexes: the probe must walk the primary key.
    """
    c = "+t." if no_index else "t."
    sql = _Sql()
    if username is not None:
        sql.add(f"{c}username = ?", username)
    if flt.actor_id is not None:
        if flt.actor_kind is not None:
            sql.add(f"{c}actor_kind = ? AND {c}actor_id = ?", flt.actor_kind, flt.actor_id)
        else:
            kinds = [k.value for k in ActorKind]
            sql.add(
                f"{c}actor_kind IN ({', '.join('?' * len(kinds))}) AND {c}actor_id = ?",
                *kinds,
                flt.actor_id,
            )
    if flt.ip is not None:
        sql.add(f"{c}ip_bytes BETWEEN ? AND ?", flt.ip.low, flt.ip.high)
        if flt.ip.exclude_v4:
            low = ip_to_bytes(str(_V4_MAPPED.network_address))
            high = ip_to_bytes(str(_V4_MAPPED.broadcast_address))
            sql.add(f"NOT ({c}ip_bytes BETWEEN ? AND ?)", low, high)
    if flt.types:
        sql.add(f"{c}event_type IN ({', '.join('?' * len(flt.types))})", *flt.types)
    if flt.since_us is not None:
        sql.add(f"{c}occurred_us >= ?", flt.since_us)
    if flt.until_us is not None:
        sql.add(f"{c}occurred_us <= ?", flt.until_us)
    return sql


def _cursor_condition(flt: TimelineFilter, after: int | None, column: str) -> _Sql:
    sql = _Sql()
    if after is not None:
        sql.add(f"{column} > ?" if flt.order == "asc" else f"{column} < ?", after)
    return sql


def _direction(flt: TimelineFilter) -> str:
    return "ASC" if flt.order == "asc" else "DESC"


def _page_sql(
    flt: TimelineFilter,
    username: str | None,
    after: int | None,
    size: int,
    *,
    unindexed_cursor: bool = False,
    dialect: Dialect = "sqlite",
) -> tuple[str, list[Any]]:
    """The page after ``after`` through the filters' own indexes.

    ``unindexed_cursor`` writes the cursor as ``+t.position`` so SQLite does not trade a
    sparse filter's index for a walk of the primary key from the cursor on.

    With an account, SQLite walks its (account, position) index in order (its other
    conditions are kept off their indexes: an account has thousands of rows at most,
    while an event type or a time window may match tens of thousands, all of which
    SQLite would otherwise read to check the account); the staff reads side starts from
    the touch table's (account, position) index.
    """
    base = _conditions(flt, username, no_index=flt.account is not None and dialect == "sqlite")
    cursor = _cursor_condition(flt, after, "+t.position" if unindexed_cursor else "t.position")
    base.where.extend(cursor.where)
    base.params.extend(cursor.params)
    columns = ", ".join(f"t.{c}" for c in COLUMNS)
    direction = _direction(flt)
    if flt.account is None:
        where = " AND ".join(base.where) or "1=1"
        statement = (
            f"SELECT {columns} FROM {TIMELINE} t WHERE {where} "  # noqa: S608 - constant names; conditions are fixed fragments with ? values
            f"ORDER BY t.position {direction} LIMIT ?"
        )
        return statement, [*base.params, size]
    # The account's own events, plus staff access that touched its data (side table);
    # the two sets are disjoint, and each side walks an (account, position) index.
    where = "".join(f" AND {c}" for c in base.where)
    # SQLite joins in the order written with CROSS JOIN: the touch table drives.
    join = "CROSS JOIN" if dialect == "sqlite" else "JOIN"
    statement = (
        f"SELECT {columns} FROM {TIMELINE} t WHERE t.account = ?{where} "  # noqa: S608 - constant names; conditions are fixed fragments with ? values
        f"UNION ALL "
        f"SELECT {columns} FROM {TOUCH} x {join} {TIMELINE} t ON t.position = x.position "
        f"WHERE x.account = ?{where} "
        f"ORDER BY 1 {direction} LIMIT ?"
    )
    return statement, [flt.account, *base.params, flt.account, *base.params, size]


def _sorted_positions_sql(
    flt: TimelineFilter, username: str | None, after: int | None, size: int
) -> tuple[str, list[Any]]:
    """PostgreSQL: the page through the filters' indexes, whatever the planner expects.

    Given ``ORDER BY position LIMIT n``, PostgreSQL walks the primary key and filters,
    expecting matches spread evenly over the log; matches bunched late in it (a week of
    logins) cost a walk over most of the table (~100-250 ms at a million rows). Ordering
    by ``position + 0`` leaves it only the filters' indexes: the positions of every match
    come from an index-only scan (each index ends with the position), a top-N sort keeps
    the page's, and only those rows are read.
    """
    base = _conditions(flt, username)
    cursor = _cursor_condition(flt, after, "t.position")
    where = " AND ".join([*base.where, *cursor.where]) or "1=1"
    columns = ", ".join(f"t.{c}" for c in COLUMNS)
    direction = _direction(flt)
    statement = (
        f"SELECT {columns} FROM {TIMELINE} t WHERE t.position IN ("  # noqa: S608 - constant names; conditions are fixed fragments with ? values
        f"SELECT t.position FROM {TIMELINE} t WHERE {where} "
        f"ORDER BY t.position + 0 {direction} LIMIT ?) "
        f"ORDER BY t.position {direction}"
    )
    return statement, [*base.params, *cursor.params, size]


def _probe_sql(
    flt: TimelineFilter,
    username: str | None,
    after: int | None,
    end: int | None,
    size: int,
    dialect: Dialect = "sqlite",
) -> tuple[str, list[Any]]:
    """The page among the positions after ``after`` up to ``end``, walking the primary
    key in order (no sort; stops at the LIMIT). SQLite is kept off the filters' indexes
    with unary ``+``; PostgreSQL takes the short key range by itself."""
    base = _conditions(flt, username, no_index=dialect == "sqlite")
    cursor = _cursor_condition(flt, after, "t.position")
    if end is not None:
        cursor.add("t.position <= ?" if flt.order == "asc" else "t.position >= ?", end)
    where = " AND ".join([*cursor.where, *base.where]) or "1=1"
    columns = ", ".join(f"t.{c}" for c in COLUMNS)
    statement = (
        f"SELECT {columns} FROM {TIMELINE} t WHERE {where} "  # noqa: S608 - constant names; conditions are fixed fragments with ? values
        f"ORDER BY t.position {_direction(flt)} LIMIT ?"
    )
    return statement, [*cursor.params, *base.params, size]


def _window_end_sql(flt: TimelineFilter, after: int | None, window: int) -> tuple[str, list[Any]]:
    cursor = _cursor_condition(flt, after, "position")
    where = " AND ".join(cursor.where) or "1=1"
    statement = (
        f"SELECT position FROM {TIMELINE} WHERE {where} "  # noqa: S608 - constant names; conditions are fixed fragments with ? values
        f"ORDER BY position {_direction(flt)} LIMIT 1 OFFSET ?"
    )
    return statement, [*cursor.params, window - 1]


def _wants_probe(flt: TimelineFilter) -> bool:
    """Filters whose index does not deliver rows in position order (ranges, type lists,
    an actor id of any kind) may match most of the log; the index plan would then sort
    millions of rows to return fifty. Walking the next few thousand positions first finds
    such dense matches at once, and costs little when they are sparse. Both databases:
    PostgreSQL's planner, left to weigh the two plans itself, walks the whole key when
    the matches are bunched late in the log."""
    ordered = flt.account is not None or flt.user is not None or flt.actor_kind is not None
    unordered = (
        flt.ip is not None
        or bool(flt.types)
        or flt.since_us is not None
        or flt.until_us is not None
        or flt.actor_id is not None
    )
    return unordered and not ordered


def resolve_username(db: ViewDB, user: str) -> str:
    """The username as registered (usernames are case-insensitive), or as given."""
    with db.reading() as tx:
        row = tx.query_one(
            f"SELECT name FROM {IDS} WHERE id = ?",  # noqa: S608 - constant table names
            (str(natural_id("user", user.lower())),),
        )
    return str(row[0]) if row else user


class TimelineQuery:
    """Iterate the entries matching a filter, page by page; afterwards ``next_after`` is
    the cursor for the following page, or None when nothing is left."""

    def __init__(
        self,
        db: ViewDB,
        flt: TimelineFilter,
        page_size: int = MAX_PAGE,
        probe_window: int = PROBE_WINDOW,
    ) -> None:
        self.db = db
        self.filter = flt
        self.page_size = max(1, page_size)
        self.probe_window = probe_window
        self.next_after: int | None = None
        self.count = 0

    def _rows(self, username: str | None, after: int | None, size: int) -> list[Any]:
        """Up to ``size`` matching rows after ``after``, in order."""
        flt = self.filter
        with self.db.reading() as tx:
            if self.probe_window > 0 and _wants_probe(flt):
                # The window's far end first: rows appended meanwhile fall outside it.
                statement, params = _window_end_sql(flt, after, self.probe_window)
                found = tx.query_one(statement, params)
                end = int(found[0]) if found else None  # None: the window holds the rest
                statement, params = _probe_sql(flt, username, after, end, size, tx.dialect)
                rows = tx.query_all(statement, params)
                if len(rows) >= size or end is None:
                    return rows
                after = end
                size -= len(rows)
                if tx.dialect == "postgres":
                    statement, params = _sorted_positions_sql(flt, username, after, size)
                else:
                    statement, params = _page_sql(flt, username, after, size, unindexed_cursor=True)
                return rows + tx.query_all(statement, params)
            statement, params = _page_sql(flt, username, after, size, dialect=tx.dialect)
            return tx.query_all(statement, params)

    def __iter__(self) -> Iterator[TimelineEntry]:
        flt = self.filter
        username = resolve_username(self.db, flt.user) if flt.user is not None else None
        after = flt.after
        remaining = flt.limit
        self.next_after = None
        self.count = 0
        while remaining is None or remaining > 0:
            want = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._rows(username, after, want + 1)
            more = len(rows) > want
            for row in rows[:want]:
                entry = TimelineEntry.from_row(row)
                after = entry.position
                self.count += 1
                yield entry
            if not more:
                return
            if remaining is not None:
                remaining -= want
        # The limit was reached and more rows match: the cursor continues after the last.
        self.next_after = after


@dataclass(frozen=True)
class TimelinePage:
    entries: list[TimelineEntry]
    next_after: int | None


def fetch_page(db: ViewDB, flt: TimelineFilter) -> TimelinePage:
    """At most ``flt.limit`` entries and the cursor for the next page."""
    query = TimelineQuery(db, flt)
    entries = list(query)
    return TimelinePage(entries, query.next_after)
