"""Where a follower puts what it reads, and where it keeps its position.

Two kinds of sink, one contract: after ``take(after, items)`` returns, the sink's
position is the last item's, and the sink has the items' effect exactly once.

- A **transactional** sink (``ViewSink``: a SQL view) writes its rows and its position
  in one database transaction per batch: exactly once, even across crashes, and it can
  be rebuilt beside the live copy and swapped in (``projections.rebuild``).
- An **acknowledged** sink (``AcknowledgedSink``: a publisher such as the Kafka relay)
  delivers a batch, waits until the other side acknowledged all of it, and only then
  saves its position: at least once, with duplicates only in a crash window.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from domain.catalogue import event_type_name
from projections.errors import PositionMovedError, ProjectionFailedError
from projections.sql import Tx, ViewDB
from projections.status import ERRORS_TABLE, TRACKING_TABLE, ViewError, read_last_error
from projections.view import REBUILD_SUFFIX, View

Wants = Literal["events", "rows"]
Items = Sequence[tuple[int, Any]]  # (position, domain event) or (position, raw row)


class Sink(Protocol):
    """What a follower writes to."""

    name: str
    wants: Wants  # decoded domain events, or the stored rows as they are

    def position(self) -> int: ...
    def take(self, after: int, items: Items) -> None: ...
    def record_error(self, position: int, event_type: str | None, message: str) -> None: ...
    def last_error(self) -> ViewError | None: ...
    def caught_up(self) -> None: ...
    def is_transient(self, error: BaseException) -> bool: ...


def item_type(item: Any) -> str:
    """An item's event type for an error message: a raw row's topic or an event's name."""
    topic = getattr(item, "topic", None)
    return event_type_name(topic if isinstance(topic, str) else item)


class AcknowledgedSink(ABC):
    """A sink that delivers and waits: its position moves only after acknowledgement."""

    name: str
    wants: Wants = "events"

    @abstractmethod
    def deliver(self, items: Items) -> None:
        """Hand every item over and return once all are acknowledged (or raise)."""

    @abstractmethod
    def save_position(self, position: int) -> None:
        """Keep ``position`` as this sink's, durably."""

    @abstractmethod
    def position(self) -> int: ...

    def take(self, after: int, items: Items) -> None:
        if not items:
            return
        self.deliver(items)
        self.save_position(items[-1][0])

    def record_error(self, position: int, event_type: str | None, message: str) -> None:  # noqa: B027 - optional
        """Keep why the sink stopped (nowhere, unless a subclass has a place for it)."""

    def last_error(self) -> ViewError | None:
        return None

    def caught_up(self) -> None:  # noqa: B027 - optional hook
        """The follower reached its target."""

    def is_transient(self, error: BaseException) -> bool:
        return False


def create_tracking_tables(tx: Tx, also: Sequence[str] = ()) -> set[str]:
    """The shared position and error tables, created if missing (inside the setup lock);
    returns which of them, and of the tables in ``also``, existed before."""
    present = tx.existing_tables((TRACKING_TABLE, ERRORS_TABLE, *also))
    if TRACKING_TABLE not in present:
        tx.execute(
            f"CREATE TABLE {TRACKING_TABLE} (view_name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
        )
    if ERRORS_TABLE not in present:
        tx.execute(
            f"CREATE TABLE {ERRORS_TABLE} "
            "(view_name TEXT PRIMARY KEY, position BIGINT NOT NULL, event_type TEXT, "
            "message TEXT NOT NULL, failed_at TEXT NOT NULL)"
        )
    return present


def write_error(db: ViewDB, name: str, position: int, event_type: str | None, message: str) -> None:
    """Keep why follower ``name`` stopped, for ``project status``; replaces any earlier."""
    with db.transaction() as tx:
        tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (name,))  # noqa: S608 - constant table names
        tx.execute(
            f"INSERT INTO {ERRORS_TABLE}(view_name, position, event_type, message, failed_at) "  # noqa: S608 - constant table names
            "VALUES (?, ?, ?, ?, ?)",
            (name, position, event_type, message, datetime.now(UTC).isoformat(timespec="seconds")),
        )


class ViewSink:
    """A SQL view with its position beside it: the transactional sink."""

    wants: Wants = "events"

    def __init__(self, view: View, db: ViewDB) -> None:
        self.view = view
        self.db = db
        self.name = view.name
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
            present = create_tracking_tables(tx, self.view.tables)
            if not present.issuperset(self.view.tables):
                self.view.token = secrets.token_hex(4)
                for statement in self.view.ddl(self.db.dialect):
                    tx.execute(statement)

    def position(self, name: str | None = None) -> int:
        with self.db.reading() as tx:
            row = tx.query_one(
                f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?",  # noqa: S608 - constant table names
                (name or self.name,),
            )
        return int(row[0]) if row else 0

    def last_error(self) -> ViewError | None:
        return read_last_error(self.db, self.name)

    def record_error(self, position: int, event_type: str | None, message: str) -> None:
        """Keep why the view stopped, for ``project status``; replaces any earlier one."""
        write_error(self.db, self.name, position, event_type, message)

    def caught_up(self) -> None:
        self.view.suffix = ""
        self.view.caught_up(self.db)

    def is_transient(self, error: BaseException) -> bool:
        return self.db.is_transient(error)

    @staticmethod
    def lock_position(tx: Tx, name: str) -> int:
        """The stored position, locked until ``tx`` ends."""
        tx.execute(
            f"INSERT INTO {TRACKING_TABLE}(view_name, position) VALUES (?, 0) "  # noqa: S608 - constant table names
            "ON CONFLICT (view_name) DO NOTHING",
            (name,),
        )
        row = tx.query_one_locked(
            f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?",  # noqa: S608 - constant table names
            (name,),
        )
        return int(row[0]) if row else 0

    @staticmethod
    def save_position(tx: Tx, name: str, position: int) -> None:
        tx.execute(
            f"INSERT INTO {TRACKING_TABLE}(view_name, position) VALUES (?, ?) "  # noqa: S608 - constant table names
            "ON CONFLICT (view_name) DO UPDATE SET position = excluded.position",
            (name, position),
        )

    # --- taking batches -----------------------------------------------------------------

    def take(self, after: int, items: Items, tracking: str | None = None) -> None:
        """The whole batch in one transaction; if it fails, event by event to commit all
        before the culprit and name it (position and type) in ``ProjectionFailedError``.

        ``tracking``: the position row to move (a rebuild's shadow), the view's own if None.
        """
        name = tracking or self.name
        if tracking is None:
            self.view.suffix = ""  # the live tables
        try:
            self._commit(name, after, items)
            return
        except PositionMovedError:
            raise
        except Exception as error:
            if self.is_transient(error):
                raise
        position = after
        for item_position, item in items:
            try:
                self._commit(name, position, [(item_position, item)])
            except (PositionMovedError, ProjectionFailedError):
                raise
            except Exception as error:
                if self.is_transient(error):
                    raise
                raise ProjectionFailedError(
                    self.name, item_position, item_type(item), error
                ) from error
            position = item_position

    def _commit(self, name: str, after: int, items: Items) -> None:
        """Apply ``items`` and move the position past them, in one transaction. The
        position is checked first: if someone else moved it, nothing is written."""
        try:
            with self.db.transaction() as tx:
                stored = self.lock_position(tx, name)
                if stored != after:
                    raise PositionMovedError(f"{name}: expected position {after}, found {stored}")
                self.view.apply_batch(tx, items)
                self.save_position(tx, name, items[-1][0])
                if name == self.name:
                    tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (name,))  # noqa: S608 - constant table names
        except BaseException:
            self.view.rolled_back()
            raise

    # --- rebuild beside the live copy, then swap -----------------------------------------

    @property
    def shadow_name(self) -> str:
        return self.name + REBUILD_SUFFIX

    def start_shadow(self) -> None:
        self.view.suffix = REBUILD_SUFFIX
        self.view.token = secrets.token_hex(4)
        with self.db.transaction() as tx:
            for table in self.view.tables:
                tx.execute(f"DROP TABLE IF EXISTS {table}{REBUILD_SUFFIX}")
            for statement in self.view.ddl(self.db.dialect):
                tx.execute(statement)
            tx.execute(f"DELETE FROM {TRACKING_TABLE} WHERE view_name=?", (self.shadow_name,))  # noqa: S608 - constant table names
        self.view.build_started()

    def finish_shadow(self) -> None:
        with self.db.transaction() as tx:
            self.view.after_build(tx)

    def swap_in(self, position: int) -> None:
        # Dropping the old tables frees every page they held, and secure_delete (on in
        # Debian's SQLite) writes zeros over each one first: ~3 us a row, as long as the
        # whole index build. FAST still clears what it rewrites anyway; the old rows hold
        # nothing the new ones (and the ledger) do not.
        with self.db.pragmas(secure_delete="FAST"), self.db.transaction() as tx:
            # Lock the live position first: a follower mid-batch finishes before the
            # swap, and one arriving after it sees the new position and re-reads.
            self.lock_position(tx, self.name)
            for table in self.view.tables:
                tx.execute(f"DROP TABLE IF EXISTS {table}")
                tx.execute(f"ALTER TABLE {table}{REBUILD_SUFFIX} RENAME TO {table}")
            tx.execute(f"DELETE FROM {TRACKING_TABLE} WHERE view_name=?", (self.shadow_name,))  # noqa: S608 - constant table names
            tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (self.name,))  # noqa: S608 - constant table names
            self.save_position(tx, self.name, position)
        # Fresh tables have neither planner statistics nor a visibility map yet.
        self.db.refresh_statistics(self.view.tables)


class TrackedSink(AcknowledgedSink):
    """An acknowledged sink whose position and last error are kept in a view database's
    shared tracking tables, so ``project status`` and the runner see it like any view.

    A subclass only says how to ``deliver`` a batch (and wait for its acknowledgement):
    the position moves after ``deliver`` returns, in its own transaction, and only
    forward from where this sink last saw it (another process that moved it meanwhile
    makes this one re-read, as for a view). A crash between the acknowledgement and the
    save re-delivers that batch: at least once.
    """

    def __init__(self, name: str, db: ViewDB) -> None:
        self.name = name
        self.db = db
        if self.db.existing_tables((TRACKING_TABLE, ERRORS_TABLE)) != {
            TRACKING_TABLE,
            ERRORS_TABLE,
        }:
            with self.db.setup_transaction() as tx:
                create_tracking_tables(tx)

    def position(self) -> int:
        with self.db.reading() as tx:
            row = tx.query_one(
                f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?",  # noqa: S608 - constant table names
                (self.name,),
            )
        return int(row[0]) if row else 0

    def take(self, after: int, items: Items) -> None:
        if not items:
            return
        if self.position() != after:
            raise PositionMovedError(f"{self.name}: expected position {after}, moved since")
        self.deliver(items)
        self.save_position(items[-1][0])

    def save_position(self, position: int) -> None:
        with self.db.transaction() as tx:
            self.save_position_in(tx, position)

    def save_position_in(self, tx: Tx, position: int) -> None:
        """Keep ``position`` (and clear the last error) in ``tx``: a subclass saves what
        else the batch changed in the same transaction."""
        ViewSink.save_position(tx, self.name, position)
        tx.execute(f"DELETE FROM {ERRORS_TABLE} WHERE view_name=?", (self.name,))  # noqa: S608 - constant table names

    def record_error(self, position: int, event_type: str | None, message: str) -> None:
        write_error(self.db, self.name, position, event_type, message)

    def last_error(self) -> ViewError | None:
        return read_last_error(self.db, self.name)

    def is_transient(self, error: BaseException) -> bool:
        return self.db.is_transient(error)
