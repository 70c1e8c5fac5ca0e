"""One follower core for every reader of the log: a source, a sink, one loop.

A follower reads the global log in batches after its position (``LogSource``: raw rows
through the storage port, decoded on demand with the catalogue's guard), hands each
batch to its sink (``projections.sinks``: a view's transaction, or a publisher that
waits for acknowledgement), and moves on. One loop, one waker (PostgreSQL NOTIFY, else
polling), one batching policy, one error record, one status. Gaps in positions are
tolerated everywhere: a follower always asks for positions after the last it saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from domain.catalogue import event_type_name
from domain.ports import RawRow
from projections.errors import PositionMovedError, ProjectionFailedError
from projections.sinks import Sink, ViewSink
from projections.source import LogSource
from projections.sql import ViewDB
from projections.status import FollowerStatus, ViewError
from projections.view import View

ProgressFn = Callable[[int, int], None]


class Waker(Protocol):
    """Tells a follower the log may have grown (e.g. PostgreSQL LISTEN/NOTIFY).

    ``generation()`` is read before catching up; ``wait(seen, timeout)`` returns at once
    if it moved since, so a notification arriving in between is never lost.
    """

    def generation(self) -> int: ...
    def wait(self, seen: int, timeout: float) -> None: ...


class StopFlag(Protocol):
    """A ``threading.Event`` or ``multiprocessing.Event``: only asked whether it is set."""

    def is_set(self) -> bool: ...


class Follower:
    """Keeps one sink up to date with the ledger's log."""

    def __init__(self, source: LogSource, sink: Sink, batch_size: int = 2000) -> None:
        self.source = source
        self.sink = sink
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.sink.name

    def position(self) -> int:
        return self.sink.position()

    def head(self) -> int:
        return self.source.head()

    def status(self) -> FollowerStatus:
        return FollowerStatus(self.name, self.position(), self.head(), self.last_error())

    def last_error(self) -> ViewError | None:
        return self.sink.last_error()

    def record_error(self, position: int, event_type: str | None, message: str) -> None:
        self.sink.record_error(position, event_type, message)

    # --- one batch -------------------------------------------------------------------------

    def items(self, rows: list[RawRow] | Any) -> tuple[list[tuple[int, Any]], Exception | None]:
        """What the sink wants of ``rows`` (decoded events, or the rows themselves), up to
        the first row that cannot be decoded, and the error of that row."""
        if self.sink.wants == "rows":
            return [(row.position, row) for row in rows], None
        decoded: list[tuple[int, Any]] = []
        decode = self.source.decode
        for row in rows:
            try:
                decoded.append((row.position, decode(row)))
            except Exception as error:
                return decoded, error
        return decoded, None

    def _process(self, after: int, stop: int | None) -> int:
        """One batch after ``after``; returns the new position (unchanged if none)."""
        rows = self.source.rows(after, self.batch_size, stop)
        if not rows:
            return after
        items, error = self.items(rows)
        if items:
            self.sink.take(after, items)
        if error is not None:
            bad = rows[len(items)]
            raise ProjectionFailedError(
                self.name, bad.position, event_type_name(str(bad.topic)), error
            ) from error
        return items[-1][0]

    def _advance(
        self,
        position: int,
        target: int | None,
        progress: ProgressFn | None,
        stopping: StopFlag | None,
    ) -> int:
        """Batches from ``position`` until ``target`` (None: until nothing is left)."""
        while (target is None or position < target) and not (stopping and stopping.is_set()):
            try:
                new_position = self._process(position, target)
            except PositionMovedError:
                new_position = self.position()
            except ProjectionFailedError as error:
                self.record_error(error.position, error.event_type, str(error))
                raise
            if new_position == position:
                break
            position = new_position
            if progress and target is not None:
                progress(position, target)
        return position

    # --- following ---------------------------------------------------------------------------

    def catch_up(
        self,
        progress: ProgressFn | None = None,
        stop: int | None = None,
        stopping: StopFlag | None = None,
    ) -> int:
        """Everything up to the current head (or ``stop``); returns how far it moved.

        With ``stopping``, returns after the batch in hand once it is set.
        """
        target = stop if stop is not None else self.head()
        start = self.position()
        position = self._advance(start, target, progress, stopping)
        if position > start and not (stopping and stopping.is_set()):
            self.sink.caught_up()
        return position - start


@dataclass
class OpenedFollower:
    """A follower ready to run, and how to release what it holds (its connections)."""

    follower: Follower
    close: Callable[[], None]


def view_follower(reader: Any, view: View, db: ViewDB, batch_size: int = 2000) -> Follower:
    """The follower of one view: the reader's log as the source, the view as the sink."""
    return Follower(LogSource.of(reader), ViewSink(view, db), batch_size)
