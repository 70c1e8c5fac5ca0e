"""The storage port: what the ledger, its campaigns and the readers need from the event
store beyond the library's ``Application``, as one small interface.

``LogStore`` is implemented for SQLite and PostgreSQL in the ``store`` package (one SQL
statement where the library would make several round trips or objects), and here, once,
through the library's recorder API alone (``RecorderLog``): the fallback for any other
recorder, and the reference the fast implementations are tested against. Nothing in
``domain/`` knows which one it was given.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from eventsourcing.persistence import ApplicationRecorder, StoredEvent


class RawRow(NamedTuple):
    """One stored event as the log holds it: nothing decoded, nothing imported."""

    position: int
    originator_id: Any  # a UUID, or its text as the database returns it
    originator_version: int
    topic: str
    state: bytes


class ResetRow(NamedTuple):
    """A User event as a reset campaign reads it: the state of reset events only.

    ``reset_scan``'s rows unpack as this tuple does, in this order; they may be the
    database driver's own rows (a ``sqlite3.Row``, a plain tuple), spared the cost of a
    ResetRow each, so read them by unpacking, not by field name."""

    originator_id: str  # as the store's ``id_text`` writes it
    originator_version: int
    topic: str
    state: bytes | None


class LogStore(Protocol):
    """Reads and writes of the event log that the library's API makes slow or impossible."""

    def head(self) -> int:
        """The position of the last stored event (0: none)."""
        ...

    def read(self, start: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        """Up to ``limit`` rows with positions from ``start`` (inclusive) to ``stop``
        (inclusive), in position order; gaps in positions are simply absent. A negative
        ``limit`` raises ValueError."""
        ...

    def scan(
        self, topics: Collection[str] | None = None, batch: int = 5000
    ) -> Iterator[Sequence[RawRow]]:
        """The whole log in batches of up to ``batch`` rows, in position order; only the
        events of ``topics`` if it is given (an empty collection: none). A ``batch`` below
        1 raises ValueError at the call."""
        ...

    def position_of(self, originator_id: uuid.UUID, version: int) -> int | None:
        """The position of one aggregate version, if it is stored."""
        ...

    def actor_and_aggregate(
        self, actor_id: uuid.UUID, after: int, aggregate_id: uuid.UUID
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]] | None:
        """In one consistent read: the acting user's (version, topic) after ``after``, and
        every (version, topic, state) of the aggregate. None: not supported here."""
        ...

    def reset_scan(
        self, topics: Sequence[str], reset_topics: Sequence[str]
    ) -> Sequence[ResetRow] | None:
        """Every event of ``topics`` in log order from one consistent read, with the state
        of ``reset_topics`` events only. None: not supported here (read it otherwise)."""
        ...

    def id_text(self, originator_id: uuid.UUID) -> str:
        """An aggregate id as ``reset_scan`` returns it."""
        ...

    def insert(self, stored_events: Sequence[StoredEvent]) -> None:
        """Store events already encoded, in one transaction, checking versions as a save
        does (a conflict raises the library's IntegrityError); nothing is notified."""
        ...


class RecorderLog:
    """``LogStore`` through the library's recorder API only."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder

    def head(self) -> int:
        return int(self.recorder.max_notification_id() or 0)

    def read(self, start: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        check_limit(limit)
        return [
            RawRow(n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in self.recorder.select_notifications(start=start, limit=limit, stop=stop)
        ]

    def scan(
        self, topics: Collection[str] | None = None, batch: int = 5000
    ) -> Iterator[Sequence[RawRow]]:
        check_batch(batch)
        return self._scan(None if topics is None else sorted(topics), batch)

    def _scan(self, topics: list[str] | None, batch: int) -> Iterator[Sequence[RawRow]]:
        """``scan``'s batches: ``topics`` sorted (None: every topic), ``batch`` checked."""
        if topics == []:
            return  # the library reads no topics as every topic
        start = 1
        wanted = topics or ()
        while True:
            notifications = self.recorder.select_notifications(
                start=start, limit=batch, topics=wanted
            )
            if not notifications:
                return
            yield [
                RawRow(n.id, n.originator_id, n.originator_version, n.topic, n.state)
                for n in notifications
            ]
            start = notifications[-1].id + 1

    def position_of(self, originator_id: uuid.UUID, version: int) -> int | None:
        return None  # the library offers no lookup; the error says "an unknown position"

    def actor_and_aggregate(
        self, actor_id: uuid.UUID, after: int, aggregate_id: uuid.UUID
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]] | None:
        return None

    def reset_scan(
        self, topics: Sequence[str], reset_topics: Sequence[str]
    ) -> Sequence[ResetRow] | None:
        return None

    def id_text(self, originator_id: uuid.UUID) -> str:
        return str(originator_id)

    def insert(self, stored_events: Sequence[StoredEvent]) -> None:
        self.recorder.insert_events(list(stored_events))


def check_limit(limit: int) -> None:
    """ValueError for a negative ``read`` limit (SQLite would read it as no limit)."""
    if limit < 0:
        raise ValueError(f"the limit of a read must be 0 or more, not {limit}")


def check_batch(batch: int) -> None:
    """ValueError for a ``scan`` batch below 1 (the scan would end at once, as if the log
    were empty, or read it whole in one batch)."""
    if batch < 1:
        raise ValueError(f"the batch of a scan must be 1 or more, not {batch}")
