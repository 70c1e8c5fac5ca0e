"""Followers: run views over the ledger's global event log with exactly-once positions.

A view's rows and its tracking position are written in the same database transaction,
one transaction per batch of events. A crash rolls back the whole batch, so restarting
from the stored position neither skips nor repeats a row.

The same code runs on SQLite (one file per view; followers poll the log) and on
PostgreSQL (view tables beside the ledger's, in the same schema).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from eventsourcing.persistence import Notification

from domain.errors import DamagedHistoryError
from domain.errors import UntrustedTopicError as UntrustedTopicError  # where callers look
from domain.ledger import Ledger

Dialect = Literal["sqlite", "postgres"]
TRACKING_TABLE = "view_tracking"
ERRORS_TABLE = "view_errors"
TRUSTED_TOPIC_PREFIX = "secstate."
REBUILD_SUFFIX = "__rebuild"
# The longest a process waits for the store's setup lock (another process creating tables).
SETUP_LOCK_TIMEOUT = 60.0
# How long a view's SQLite connection waits for the write lock, at least.
SQLITE_VIEW_LOCK_TIMEOUT = 30.0


def setup_lock_key(schema: str) -> str:
    """The PostgreSQL advisory lock (hashed) under which all of a schema's DDL runs: the
    ledger's tables (``secstate.store``) and the views' (``ViewDB.setup_transaction``)."""
    return f"secstate:{schema}:schema-setup"


class ProjectionError(Exception):
    """A view could not apply an event; the view stops at the position before it."""


class ProjectionFailedError(ProjectionError):
    def __init__(self, view: str, position: int, event_type: str, cause: BaseException) -> None:
        self.view = view
        self.position = position
        self.event_type = event_type
        self.cause = cause
        # A damaged row says what is wrong itself; other causes are named by their type.
        why = (
            str(cause)
            if isinstance(cause, DamagedHistoryError)
            else (f"{type(cause).__name__}: {cause}")
        )
        super().__init__(
            f"projection {view!r} stopped at position {position} ({event_type[:80]}): {why}"
        )


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class ViewDB:
    """One connection to where a view lives, hiding the SQL dialect's small differences.

    SQL is written with ``?`` placeholders and translated to ``%s`` for PostgreSQL.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        sqlite_path: Path | None = None,
        postgres: dict[str, str] | None = None,
        lock_timeout: float = SQLITE_VIEW_LOCK_TIMEOUT,
    ) -> None:
        self.dialect = dialect
        self._lock = threading.Lock()
        if dialect == "sqlite":
            assert sqlite_path is not None
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self._sqlite = sqlite3.connect(
                str(sqlite_path),
                isolation_level=None,
                check_same_thread=False,
                timeout=lock_timeout,
            )
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
        else:
            import psycopg

            assert postgres is not None
            self.schema = postgres.get("POSTGRES_SCHEMA") or "public"
            self._pg = psycopg.connect(
                dbname=postgres["POSTGRES_DBNAME"],
                host=postgres["POSTGRES_HOST"],
                port=int(postgres["POSTGRES_PORT"]),
                user=postgres["POSTGRES_USER"],
                password=postgres.get("POSTGRES_PASSWORD") or None,
                autocommit=True,
            )
            self._pg.execute(f'SET search_path TO "{self.schema}"')

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing: the body's writes commit together or roll back together."""
        with self._lock:
            cur: Any
            if self.dialect == "sqlite":
                cur = self._sqlite.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self, cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            else:
                with self._pg.transaction(), self._pg.cursor() as cur:
                    yield Tx(self, cur)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only cursor (a consistent snapshot on PostgreSQL)."""
        with self._lock:
            cur: Any
            if self.dialect == "sqlite":
                cur = self._sqlite.cursor()
                try:
                    yield Tx(self, cur)
                finally:
                    cur.close()
            else:
                with self._pg.transaction(), self._pg.cursor() as cur:
                    yield Tx(self, cur)

    def execute_outside_transaction(self, statement: str) -> Any:
        """One statement on its own (PostgreSQL refuses VACUUM inside a transaction);
        returns the first row, if any."""
        with self._lock:
            if self.dialect == "sqlite":
                return self._sqlite.execute(statement).fetchone()
            cursor = self._pg.execute(statement)
            return cursor.fetchone() if cursor.description else None

    @contextlib.contextmanager
    def setup_transaction(self) -> Iterator[Tx]:
        """A transaction for DDL, holding the store's setup lock until it ends: SQLite's
        write lock (BEGIN IMMEDIATE), or on PostgreSQL the schema's advisory lock, the one
        the ledger's own setup takes (the schema is created first if missing). Look again
        inside it before creating anything: another process may have just done it."""
        with self.transaction() as tx:
            if self.dialect == "postgres":
                tx.execute(f"SET LOCAL lock_timeout = '{int(SETUP_LOCK_TIMEOUT * 1000)}ms'")
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                    (setup_lock_key(self.schema),),
                )
                if tx.query_one("SELECT to_regnamespace(?)", (self.schema,))[0] is None:
                    tx.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            yield tx

    def existing_tables(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` exist (in this view's file or schema): one catalog query."""
        with self.reading() as tx:
            return tx.existing_tables(names)

    def table_exists(self, name: str) -> bool:
        return name in self.existing_tables([name])

    def close(self) -> None:
        if self.dialect == "sqlite":
            self._sqlite.close()
        else:
            self._pg.close()


class Tx:
    """A cursor inside one transaction, with dialect-aware helpers."""

    def __init__(self, db: ViewDB, cursor: Any) -> None:
        self.db = db
        self.cursor = cursor
        self.dialect: Dialect = db.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cursor.execute(self.db.sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self.db.sql(sql), rows)

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.execute(sql, params)
        return self.cursor.fetchone()

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.execute(sql, params)
        return list(self.cursor.fetchall())

    def existing_tables(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` exist, as this transaction sees the catalog."""
        if self.dialect == "sqlite":
            rows = self.query_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                f"AND name IN ({', '.join('?' * len(names))})",
                list(names),
            )
        else:
            rows = self.query_all(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ? AND c.relname = ANY(?) AND c.relkind IN ('r', 'p')",
                (self.db.schema, list(names)),
            )
        return {str(row[0]) for row in rows}


class View(ABC):
    """A read model maintained from the event log.

    ``tables`` are the view's tables by their live names; during a rebuild the follower
    asks for them with ``REBUILD_SUFFIX`` appended (``self.t(name)`` does it), builds them
    from position 0, then swaps them in with the tracking row in one transaction.
    Index and constraint names go through ``self.i(name)``, which appends a token fresh
    for each build, because renaming a table does not rename its indexes.
    """

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        self.suffix = ""
        self.token = secrets.token_hex(4)

    def t(self, table: str) -> str:
        return table + self.suffix

    def i(self, index: str) -> str:
        return f"{index}_{self.token}"

    @abstractmethod
    def ddl(self, dialect: Dialect) -> list[str]:
        """CREATE TABLE / CREATE INDEX statements naming tables with ``self.t(...)`` and
        indexes and constraints with ``self.i(...)``."""

    @abstractmethod
    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        """Apply (position, domain event) pairs, in log order, inside ``tx``.

        Raise ``ProjectionFailedError`` naming the position and type of an event that
        cannot be applied; the whole batch is then rolled back.
        """

    def after_build(self, tx: Tx) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once a rebuild's shadow tables hold the whole log, just before the swap
        (e.g. to create indexes that were cheaper to build once than row by row)."""

    def build_started(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """A rebuild has just created its (empty) shadow tables: ``apply_batch`` will now
        see the whole log in order, so a view may keep what it writes in memory."""

    def build_ended(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """The rebuild finished, failed or stopped: drop whatever it kept in memory."""

    def rolled_back(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """A transaction that applied a batch rolled back: forget any in-memory state the
        batch changed (the tables no longer hold it)."""

    def caught_up(self, db: ViewDB) -> None:  # noqa: B027 - optional hook, no-op by default
        """A catch-up that applied events has reached its target (usually the head), in
        its own transactions after the last batch: e.g. to create indexes that were
        cheaper to build once the table is full. Check before taking any lock: this runs
        after every catch-up that applied something."""


def _not_serialisable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def compact_json(
    *,
    ensure_ascii: bool = True,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ...)``, same text, without building an
    encoder on every call (~1 us of a ~3 us call). No check for circular structures:
    for the views' own rows, which are trees."""
    c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return functools.partial(
            json.dumps,
            ensure_ascii=ensure_ascii,
            sort_keys=sort_keys,
            default=default,
            separators=(",", ":"),
        )
    encode = c_make_encoder(
        None,  # markers: no circular check
        default or _not_serialisable,
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring,
        None,  # indent
        ":",
        ",",
        sort_keys,
        False,  # skipkeys
        True,  # allow_nan
    )

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps


def event_type_name(event: Any) -> str:
    """``User.PasswordChanged`` from the stable topic ``secstate.User.PasswordChanged``."""
    topic: str = getattr(type(event), "TOPIC", type(event).__qualname__)
    return topic.removeprefix(TRUSTED_TOPIC_PREFIX)


@dataclass(frozen=True)
class ViewError:
    """Why a view last stopped, as stored beside it (cleared once it moves on)."""

    view: str
    position: int
    event_type: str | None
    message: str
    failed_at: datetime


@dataclass(frozen=True)
class FollowerStatus:
    view: str
    position: int
    head: int
    last_error: ViewError | None = None

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


ProgressFn = Callable[[int, int], None]


class Waker(Protocol):
    """Tells a follower the log may have grown (e.g. PostgreSQL LISTEN/NOTIFY).

    ``generation()`` is read before catching up; ``wait(seen, timeout)`` returns at once
    if it moved since, so a notification arriving in between is never lost.
    """

    def generation(self) -> int: ...
    def wait(self, seen: int, timeout: float) -> None: ...


class PositionMovedError(Exception):
    """Another writer moved the view's tracking position (a rebuild swap, a second runner)."""


def _is_transient(error: BaseException) -> bool:
    """Database trouble that says nothing about the event: retry rather than stop the view."""
    if isinstance(error, sqlite3.OperationalError):
        text = str(error).lower()
        return "locked" in text or "busy" in text
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(error, psycopg.OperationalError)


class Follower:
    """Keeps one view up to date with the ledger's log, exactly once."""

    def __init__(self, ledger: Ledger, view: View, db: ViewDB, batch_size: int = 2000) -> None:
        self.ledger = ledger
        self.view = view
        self.db = db
        self.batch_size = batch_size
        self.setup()

    # --- storage ---------------------------------------------------------------------

    def setup(self) -> None:
        """Make sure the view's tables and the shared tracking and error tables exist.

        When they do (nearly always), this costs one catalog query and takes no lock. Else
        it takes the store's setup lock, looks again, and creates what is still missing,
        so processes starting together on an empty store never run the same DDL at once.
        """
        self.view.suffix = ""
        needed = (TRACKING_TABLE, ERRORS_TABLE, *self.view.tables)
        if self.db.existing_tables(needed) == set(needed):
            return
        with self.db.setup_transaction() as tx:
            present = tx.existing_tables(needed)
            if TRACKING_TABLE not in present:
                tx.execute(
                    f"CREATE TABLE {TRACKING_TABLE} "
                    "(view_name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
                )
            if ERRORS_TABLE not in present:
                tx.execute(
                    f"CREATE TABLE {ERRORS_TABLE} "
                    "(view_name TEXT PRIMARY KEY, position BIGINT NOT NULL, event_type TEXT, "
                    "message TEXT NOT NULL, failed_at TEXT NOT NULL)"
                )
            if not present.issuperset(self.view.tables):
                self.view.token = secrets.token_hex(4)
                for statement in self.view.ddl(self.db.dialect):
                    tx.execute(statement)

    def position(self, name: str | None = None) -> int:
        with self.db.reading() as tx:
            row = tx.query_one(
                f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?",
                (name or self.view.name,),
            )
        return int(row[0]) if row else 0

    def head(self) -> int:
        return int(self.ledger.recorder.max_notification_id() or 0)

    def status(self) -> FollowerStatus:
        return FollowerStatus(self.view.name, self.position(), self.head(), self.last_error())

    def last_error(self) -> ViewError | None:
        return read_last_error(self.db, self.view.name)

    def record_error(self, position: int, event_type: str | None, message: str) -> None:
        """Keep why the view stopped, for ``project status``; replaces any earlier one."""
        with self.db.transaction() as tx:
            tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (self.view.name,))
            tx.execute(
                f"INSERT INTO {ERRORS_TABLE}(view_name, position, event_type, message, failed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    self.view.name,
                    position,
                    event_type,
                    message,
                    datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )

    # --- processing --------------------------------------------------------------------

    def _decode(self, notification: Notification) -> Any:
        # The ledger's mapper resolves topics only against the catalogue of our own
        # classes (domain.catalogue): an untrusted topic is refused before any import.
        return self.ledger.mapper.to_domain_event(notification)

    def _lock_position(self, tx: Tx, name: str) -> int:
        """The stored position, locked until ``tx`` ends (SQLite: BEGIN IMMEDIATE did it)."""
        if tx.dialect == "postgres":
            tx.execute(
                f"INSERT INTO {TRACKING_TABLE}(view_name, position) VALUES (?, 0) "
                "ON CONFLICT (view_name) DO NOTHING",
                (name,),
            )
            row = tx.query_one(
                f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=? FOR UPDATE", (name,)
            )
        else:
            row = tx.query_one(f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?", (name,))
        return int(row[0]) if row else 0

    def _commit(self, tracking_name: str, start_after: int, events: list[tuple[int, Any]]) -> None:
        """Apply ``events`` and move the position past them, in one transaction.

        The position is checked first: if someone else moved it, nothing is written.
        """
        try:
            with self.db.transaction() as tx:
                stored = self._lock_position(tx, tracking_name)
                if stored != start_after:
                    raise PositionMovedError(
                        f"{tracking_name}: expected position {start_after}, found {stored}"
                    )
                self.view.apply_batch(tx, events)
                self._save_position(tx, tracking_name, events[-1][0])
                if tracking_name == self.view.name:
                    tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (tracking_name,))
        except BaseException:
            self.view.rolled_back()
            raise

    def _apply(self, tracking_name: str, start_after: int, events: list[tuple[int, Any]]) -> None:
        """The whole batch at once; if it fails, event by event to commit everything before
        the culprit and name it (position and type) in ``ProjectionFailedError``."""
        try:
            self._commit(tracking_name, start_after, events)
            return
        except PositionMovedError:
            raise
        except Exception as error:
            if _is_transient(error):
                raise
        position = start_after
        for event_position, event in events:
            try:
                self._commit(tracking_name, position, [(event_position, event)])
            except (PositionMovedError, ProjectionFailedError):
                raise
            except Exception as error:
                if _is_transient(error):
                    raise
                raise ProjectionFailedError(
                    self.view.name, event_position, event_type_name(event), error
                ) from error
            position = event_position

    def _process(self, tracking_name: str, start_after: int, stop: int | None) -> int:
        """One batch after ``start_after``; returns the new position (unchanged if none)."""
        notifications = self.ledger.recorder.select_notifications(
            start=start_after + 1, limit=self.batch_size, stop=stop
        )
        if not notifications:
            return start_after
        events: list[tuple[int, Any]] = []
        undecodable: tuple[Notification, Exception] | None = None
        for n in notifications:
            try:
                events.append((n.id, self._decode(n)))
            except Exception as error:
                undecodable = (n, error)
                break
        if events:
            self._apply(tracking_name, start_after, events)
        if undecodable is not None:
            bad, cause = undecodable
            raise ProjectionFailedError(
                self.view.name, bad.id, bad.topic.removeprefix(TRUSTED_TOPIC_PREFIX), cause
            ) from cause
        return events[-1][0]

    def _save_position(self, tx: Tx, name: str, position: int) -> None:
        if tx.dialect == "sqlite":
            tx.execute(
                f"INSERT INTO {TRACKING_TABLE}(view_name, position) VALUES (?, ?) "
                "ON CONFLICT(view_name) DO UPDATE SET position=excluded.position",
                (name, position),
            )
        else:
            tx.execute(
                f"INSERT INTO {TRACKING_TABLE}(view_name, position) VALUES (?, ?) "
                "ON CONFLICT(view_name) DO UPDATE SET position=EXCLUDED.position",
                (name, position),
            )

    def _advance(
        self,
        tracking_name: str,
        position: int,
        target: int | None,
        progress: ProgressFn | None,
        stopping: threading.Event | None,
    ) -> int:
        """Batches from ``position`` until ``target`` (None: until nothing is left)."""
        while (target is None or position < target) and not (stopping and stopping.is_set()):
            try:
                new_position = self._process(tracking_name, position, target)
            except PositionMovedError:
                new_position = self.position(tracking_name)
            except ProjectionFailedError as error:
                if tracking_name == self.view.name:
                    self.record_error(error.position, error.event_type, str(error))
                raise
            if new_position == position:
                break
            position = new_position
            if progress and target is not None:
                progress(position, target)
        return position

    def catch_up(
        self,
        progress: ProgressFn | None = None,
        stop: int | None = None,
        stopping: threading.Event | None = None,
    ) -> int:
        """Process everything up to the current head (or ``stop``); returns events applied.

        With ``stopping``, returns after the batch in hand once it is set.
        """
        self.view.suffix = ""
        target = stop if stop is not None else self.head()
        start = self.position()
        position = self._advance(self.view.name, start, target, progress, stopping)
        if position > start and not (stopping and stopping.is_set()):
            self.view.caught_up(self.db)
        return position - start

    def run_forever(
        self,
        stopping: threading.Event,
        poll_interval: float = 0.5,
        waker: Waker | None = None,
    ) -> None:
        """Follow the log until ``stopping`` is set; errors propagate and stop this view.

        Between catch-ups it sleeps ``poll_interval``, or less when ``waker`` says so.
        """
        while not stopping.is_set():
            seen = waker.generation() if waker else 0
            if self.catch_up(stopping=stopping) == 0 and not stopping.is_set():
                if waker:
                    waker.wait(seen, poll_interval)
                else:
                    stopping.wait(poll_interval)

    # --- rebuild ---------------------------------------------------------------------------

    def rebuild(
        self, progress: ProgressFn | None = None, stopping: threading.Event | None = None
    ) -> int:
        """Build a fresh copy from position 0 beside the live one, then swap it in.

        Readers keep using the live tables until the swap, which is one transaction.
        Returns the position of the swapped-in copy; if ``stopping`` is set first, the
        live view is left untouched (and -1 returned).
        """
        return rebuild_together([self], progress, stopping)

    @property
    def shadow_name(self) -> str:
        return self.view.name + REBUILD_SUFFIX

    def _start_shadow(self) -> None:
        self.view.suffix = REBUILD_SUFFIX
        self.view.token = secrets.token_hex(4)
        with self.db.transaction() as tx:
            for table in self.view.tables:
                tx.execute(f"DROP TABLE IF EXISTS {table}{REBUILD_SUFFIX}")
            for statement in self.view.ddl(self.db.dialect):
                tx.execute(statement)
            tx.execute(f"DELETE FROM {TRACKING_TABLE} WHERE view_name=?", (self.shadow_name,))
        self.view.build_started()

    def _finish_shadow(self) -> None:
        with self.db.transaction() as tx:
            self.view.after_build(tx)

    def _swap_in(self, position: int) -> None:
        # Dropping the old tables frees every page they held, and secure_delete (on in
        # Debian's SQLite) writes zeros over each one first: ~3 us a row, as long as the
        # whole index build. FAST still clears what it rewrites anyway; the old rows hold
        # nothing the new ones (and the ledger) do not.
        with sqlite_pragmas(self.db, secure_delete="FAST"), self.db.transaction() as tx:
            # Lock the live position first: a follower mid-batch finishes before the
            # swap, and one arriving after it sees the new position and re-reads.
            self._lock_position(tx, self.view.name)
            for table in self.view.tables:
                tx.execute(f"DROP TABLE IF EXISTS {table}")
                tx.execute(f"ALTER TABLE {table}{REBUILD_SUFFIX} RENAME TO {table}")
            tx.execute(f"DELETE FROM {TRACKING_TABLE} WHERE view_name=?", (self.shadow_name,))
            tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (self.view.name,))
            self._save_position(tx, self.view.name, position)
        if self.db.dialect == "postgres":
            # Fresh tables have neither planner statistics nor a visibility map until
            # autovacuum comes by; good plans and index-only scans need both.
            for table in self.view.tables:
                self.db.execute_outside_transaction(f"VACUUM (ANALYZE) {table}")


# A rebuild commits this many of the follower's batches at a time: fewer, larger
# transactions rewrite fewer pages (a record updated twice is written once) and commit
# less often (~8% faster at 2,000 a batch). Nobody reads a shadow table meanwhile.
REBUILD_BATCHES_PER_COMMIT = 5
# While a rebuild writes a SQLite shadow, checkpoint its WAL every this many pages, not
# SQLite's 1,000: pages written again and again (the B-trees' right edges) are copied
# back to the database less often (~7% faster a timeline). The WAL is cut back to
# REBUILD_WAL_KEEP_BYTES after each checkpoint.
REBUILD_WAL_CHECKPOINT_PAGES = 100_000
REBUILD_WAL_KEEP_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def sqlite_pragmas(where: ViewDB | Tx, **values: int | str) -> Iterator[None]:
    """Set a SQLite connection's pragmas for the duration, then put back what they were
    (nothing on PostgreSQL). ``where``: the view's database, or a transaction on it."""
    if where.dialect != "sqlite":
        yield
        return
    run = where.execute_outside_transaction if isinstance(where, ViewDB) else where.query_one
    saved = {name: run(f"PRAGMA {name}")[0] for name in values}
    try:
        for name, value in values.items():
            run(f"PRAGMA {name} = {value}")
        yield
    finally:
        for name, value in saved.items():
            run(f"PRAGMA {name} = {int(value)}")


class StopFlag(Protocol):
    """A ``threading.Event`` or ``multiprocessing.Event``: only asked whether it is set."""

    def is_set(self) -> bool: ...


def rebuild_together(
    followers: Sequence[Follower],
    progress: ProgressFn | None = None,
    stopping: StopFlag | None = None,
    *,
    stop_at: int | None = None,
    before_swap: Callable[[int], bool] | None = None,
) -> int:
    """Rebuild several views of one ledger from a single scan of the log.

    Reading and decoding the log costs more than most views' own work, so each batch
    is read straight from the ledger's table and decoded once (``projections.fastlog``:
    the same events as the ledger's mapper makes, cheaper), then applied to every view's
    shadow tables (each view in its own transaction, with its own shadow position).
    When all reach the head (and their indexes are built), each is swapped in. A failure
    leaves every live view untouched. Returns the position swapped in, or -1 if
    ``stopping`` was set first.

    ``stop_at`` builds up to that position only (several processes rebuilding views of
    one log stop at the same place); ``before_swap(position)``, called once the shadows
    are complete, swaps them in only if it returns True (else -1, nothing swapped): a
    caller can wait there until other processes' shadows are complete too.
    """
    from projections.fastlog import EventDecoder, LogReader  # it imports this module

    if not followers:
        raise ValueError("nothing to rebuild")
    first = followers[0]
    names = ", ".join(f.view.name for f in followers)
    reader, decoder = LogReader(first.ledger), EventDecoder(first.ledger)
    batch_size = first.batch_size * REBUILD_BATCHES_PER_COMMIT
    # A rebuild makes millions of short-lived dicts and tuples, none of them in a cycle;
    # the cyclic collector would walk every live batch and cached record again and again
    # (a quarter of the time). Reference counting frees them all the same.
    collecting = gc.isenabled()
    gc.disable()
    pragmas = contextlib.ExitStack()
    try:
        for follower in followers:
            # Rarer WAL checkpoints for the duration (the connection's own settings).
            pragmas.enter_context(
                sqlite_pragmas(
                    follower.db,
                    wal_autocheckpoint=REBUILD_WAL_CHECKPOINT_PAGES,
                    journal_size_limit=REBUILD_WAL_KEEP_BYTES,
                )
            )
        for follower in followers:
            follower._start_shadow()
        position = 0
        # Up to the head, then what arrived meanwhile (or exactly up to ``stop_at``).
        targets = (first.head(), None) if stop_at is None else (stop_at,)
        for target in targets:
            while (target is None or position < target) and not (stopping and stopping.is_set()):
                rows = reader.read(position + 1, batch_size, target)
                if not rows:
                    break
                events: list[tuple[int, Any]] = []
                for row in rows:
                    try:
                        events.append((row[0], decoder.decode(row)))
                    except Exception as error:
                        topic = row[3].removeprefix(TRUSTED_TOPIC_PREFIX)
                        raise ProjectionFailedError(names, row[0], topic, error) from error
                for follower in followers:
                    try:
                        follower._apply(follower.shadow_name, position, events)
                    except ProjectionFailedError as error:
                        follower.record_error(error.position, error.event_type, f"rebuild: {error}")
                        raise
                position = events[-1][0]
                if progress and target is not None:
                    progress(position, target)
        if stopping and stopping.is_set():
            return -1
        for follower in followers:
            follower._finish_shadow()
        if before_swap is not None and not before_swap(position):
            return -1
        for follower in followers:
            follower._swap_in(position)
        return position
    finally:
        if collecting:
            gc.enable()
        for follower in followers:
            follower.view.build_ended()
            follower.view.suffix = ""
        pragmas.close()


def read_last_error(db: ViewDB, view_name: str) -> ViewError | None:
    """The stored error of a view, if any (None too if the table is not there yet)."""
    if not db.table_exists(ERRORS_TABLE):
        return None
    with db.reading() as tx:
        row = tx.query_one(
            f"SELECT position, event_type, message, failed_at FROM {ERRORS_TABLE} "
            "WHERE view_name=?",
            (view_name,),
        )
    if row is None:
        return None
    return ViewError(
        view_name, int(row[0]), row[1], str(row[2]), datetime.fromisoformat(str(row[3]))
    )


def read_position(db: ViewDB, view_name: str) -> int | None:
    """A view's stored position without creating anything; None if it never ran."""
    if not db.table_exists(TRACKING_TABLE):
        return None
    with db.reading() as tx:
        row = tx.query_one(f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?", (view_name,))
    return int(row[0]) if row else None


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
