"""The storage port's contract (``domain.ports.LogStore``), stated once and run against
every implementation on both backends: ``SqliteLog`` and ``PostgresLog`` (what
``store.log.log_store`` picks) and ``RecorderLog`` (the library's recorder API alone)
over SQLite and PostgreSQL alike.

The log here is written through the library's own recorder, with topics and states of
the test's choosing: the port neither decodes nor imports anything, so nothing of the
domain is needed to state what it returns.

What the contract leaves open, and the tests normalise:

- ``RawRow.originator_id`` is a UUID or its text as the database returns it (SQLite's
  rows hold hex); ``uuid.UUID(str(value))`` is the aggregate's id either way.
- ``id_text`` (and so the reset scan's ids) is the database's own form: 32 hex digits
  on SQLite, the canonical UUID text on PostgreSQL.
- ``RecorderLog`` answers None to ``position_of``, ``actor_and_aggregate`` and
  ``reset_scan``: unsupported, the caller falls back.

Every other answer is the same for every implementation on either backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent

from domain.ports import LogStore, RawRow, RecorderLog
from secstate.bootstrap import build_reader
from secstate.settings import Settings
from store.log import PostgresLog, SqliteLog, log_store

# What RecorderLog may answer with None ("unsupported: the caller falls back").
OPTIONAL = frozenset({"position_of", "actor_and_aggregate", "reset_scan"})

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
ACME = uuid.UUID("00000000-0000-4000-8000-00000000ac3e")


@dataclass
class Subject:
    """One implementation of the port over one backend, and the recorder it reads."""

    store: LogStore
    recorder: ApplicationRecorder
    backend: str
    native: bool  # SqliteLog / PostgresLog, not RecorderLog

    def supports(self, operation: str) -> bool:
        return self.native or operation not in OPTIONAL

    def append(self, *events: tuple[uuid.UUID, int, str, bytes]) -> None:
        """Store events as the library's save does (its recorder, one transaction)."""
        self.recorder.insert_events([StoredEvent(*event) for event in events])

    def delete(self, positions: Sequence[int]) -> None:
        """Remove rows, leaving gaps in the positions (as rolled-back inserts leave on
        PostgreSQL, where the sequence is not given back)."""
        table = self.recorder.events_table_name  # type: ignore[attr-defined]
        if self.backend == "sqlite":
            with self.recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
                cursor.execute(
                    f"DELETE FROM {table} WHERE rowid IN ({','.join('?' * len(positions))})",  # noqa: S608
                    list(positions),
                )
            return
        from psycopg.sql import SQL, Identifier

        schema = self.recorder.datastore.schema  # type: ignore[attr-defined]
        with self.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            conn.execute(
                SQL("DELETE FROM {}.{} WHERE notification_id = ANY(%s)").format(
                    Identifier(schema), Identifier(table)
                ),
                (list(positions),),
            )
            conn.commit()

    def library_rows(self) -> list[tuple[int, uuid.UUID, int, str, bytes]]:
        """The whole log as the library's recorder reads it."""
        return [
            (n.id, as_uuid(n.originator_id), n.originator_version, n.topic, bytes(n.state))
            for n in self.recorder.select_notifications(start=1, limit=1_000_000)
        ]


@contextmanager
def opened(settings: Settings, backend: str, *, native: bool) -> Iterator[Subject]:
    """The store of ``settings`` through the implementation ``log_store`` picks for its
    recorder (native), or through ``RecorderLog``."""
    reader = build_reader(settings)
    try:
        store = log_store(reader.recorder) if native else RecorderLog(reader.recorder)
        if native:
            assert type(store) is (SqliteLog if backend == "sqlite" else PostgresLog)
        yield Subject(store, reader.recorder, backend, native)
    finally:
        reader.close()


@pytest.fixture(params=["native", "recorder"])
def subject(request: pytest.FixtureRequest, backend: str, settings: Settings) -> Iterator[Subject]:
    """Every implementation of the port, on every backend."""
    with opened(settings, backend, native=request.param == "native") as subject:
        yield subject


@pytest.fixture
def fallback(backend: str, settings: Settings) -> Iterator[Subject]:
    """RecorderLog, on every backend."""
    with opened(settings, backend, native=False) as subject:
        yield subject


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def plain(rows: Sequence[RawRow]) -> list[tuple[int, uuid.UUID, int, str, bytes]]:
    """Rows with the aggregate id as a UUID, checking each field's documented type."""
    out = []
    for row in rows:
        assert isinstance(row, RawRow)
        position, originator_id, version, topic, state = row
        assert isinstance(originator_id, uuid.UUID | str)
        assert type(position) is int
        assert type(version) is int
        assert type(topic) is str
        assert type(state) is bytes
        out.append((position, as_uuid(originator_id), version, topic, state))
    return out


def positions(rows: Sequence[RawRow]) -> list[int]:
    return [row.position for row in rows]


def five_events(subject: Subject) -> None:
    """Positions 1..5: alice 1-3 and acme 1-2, interleaved, three topics."""
    subject.append((ALICE, 1, "t:created", b"a1"), (ACME, 1, "t:opened", b"c1"))
    subject.append((ALICE, 2, "t:changed", b"a2"))
    subject.append((ACME, 2, "t:changed", b"c2"), (ALICE, 3, "t:changed", b"a3"))


# --- an empty store ----------------------------------------------------------------------------


def test_empty_store_has_head_zero_and_no_rows(subject: Subject) -> None:
    # given a store with no event
    store = subject.store
    # when / then its head is 0, and every read is empty
    assert store.head() == 0
    assert list(store.read(1, 100)) == []
    assert list(store.read(0, 100, stop=10)) == []
    assert list(store.scan()) == []
    assert list(store.scan(topics={"t:created"})) == []


def test_empty_store_knows_no_position_actor_or_reset_rows(subject: Subject) -> None:
    # given a store with no event
    store = subject.store
    # when the optional operations are asked
    found = store.position_of(ALICE, 1)
    read = store.actor_and_aggregate(ALICE, 0, ACME)
    resets = store.reset_scan(["t:created"], ["t:created"])
    # then none is found, or the operation is unsupported (None: the caller falls back)
    assert found is None
    if subject.supports("actor_and_aggregate"):
        assert read == ([], [])
        assert resets is not None
        assert list(resets) == []
    else:
        assert read is None
        assert resets is None


# --- head and read -----------------------------------------------------------------------------


def test_appended_events_get_increasing_positions_and_the_head_is_the_last(
    subject: Subject,
) -> None:
    # given five events appended in three transactions
    five_events(subject)
    # when the log is read
    rows = plain(subject.store.read(1, 100))
    # then they are there in the order stored, at positions 1..5, the head the last
    assert rows == [
        (1, ALICE, 1, "t:created", b"a1"),
        (2, ACME, 1, "t:opened", b"c1"),
        (3, ALICE, 2, "t:changed", b"a2"),
        (4, ACME, 2, "t:changed", b"c2"),
        (5, ALICE, 3, "t:changed", b"a3"),
    ]
    assert subject.store.head() == 5


def test_rows_are_those_the_librarys_recorder_reads(subject: Subject) -> None:
    # given a log, with a gap
    five_events(subject)
    subject.delete([2])
    # when it is read through the port
    rows = plain(subject.store.read(1, 100))
    # then it is what the library's recorder reads, field for field
    assert rows == subject.library_rows()
    assert subject.store.head() == subject.recorder.max_notification_id() == 5


@pytest.mark.parametrize(
    ("start", "limit", "stop", "expected"),
    [
        (1, 2, None, [1, 2]),  # the limit counts rows from start, inclusive
        (3, 100, None, [3, 4, 5]),  # a limit beyond the end: the rest
        (0, 100, None, [1, 2, 3, 4, 5]),  # below the first position: from the first
        (-5, 1, None, [1]),
        (2, 100, 4, [2, 3, 4]),  # stop is inclusive
        (2, 2, 4, [2, 3]),  # the limit applies within start..stop
        (4, 100, 4, [4]),
        (5, 100, 4, []),  # stop before start: nothing
        (6, 100, None, []),  # after the head: nothing
        (1, 0, None, []),  # no row wanted: none
        (1, 100, 0, []),
    ],
)
def test_read_takes_start_inclusive_stop_inclusive_and_at_most_limit_rows(
    subject: Subject, start: int, limit: int, stop: int | None, expected: list[int]
) -> None:
    # given positions 1..5
    five_events(subject)
    # when a range is read / then it holds just the positions asked for, in order
    assert positions(subject.store.read(start, limit, stop)) == expected


def test_read_skips_gaps_and_the_limit_counts_rows_not_positions(subject: Subject) -> None:
    # given positions 1..5 with 2 and 3 missing (rows deleted, or ids a rolled-back
    # transaction took)
    five_events(subject)
    subject.delete([2, 3])
    # when the log is read in batches of two, each from after the last row read
    batches = []
    start = 1
    while batch := subject.store.read(start, 2):
        batches.append(positions(batch))
        start = batch[-1].position + 1
    # then the gaps are simply absent: a batch is full across a gap, and nothing repeats
    assert batches == [[1, 4], [5]]
    assert positions(subject.store.read(2, 100, stop=3)) == []
    assert positions(subject.store.read(2, 1)) == [4]
    # and the head is still the last position
    assert subject.store.head() == 5


def test_head_is_the_last_position_even_when_earlier_ones_are_missing(subject: Subject) -> None:
    # given a log whose last row is deleted and whose middle rows are gone
    five_events(subject)
    subject.delete([2, 3, 5])
    # when / then the head is the highest stored position
    assert subject.store.head() == 4


def test_events_refused_by_a_conflict_leave_the_head_and_later_events_follow_it(
    subject: Subject,
) -> None:
    # given a log of five, and a transaction whose second event is a version already
    # stored (on PostgreSQL its ids are taken from the sequence and never given back)
    five_events(subject)
    with pytest.raises(IntegrityError):
        subject.append((BOB, 1, "t:created", b"b1"), (ALICE, 3, "t:changed", b"again"))
    # when the next event is stored
    assert subject.store.head() == 5
    subject.append((BOB, 1, "t:created", b"b1"))
    # then it follows the head, perhaps after a gap, and reads back as stored
    (last,) = plain(subject.store.read(6, 100))
    assert last[0] > 5
    assert last[1:] == (BOB, 1, "t:created", b"b1")
    assert subject.store.head() == last[0]


# --- scan --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (2, [[1, 2], [3, 4], [5]]),
        (5, [[1, 2, 3, 4, 5]]),  # exactly one full batch: no empty one after it
        (1, [[1], [2], [3], [4], [5]]),
        (5000, [[1, 2, 3, 4, 5]]),
    ],
)
def test_scan_yields_the_whole_log_in_full_batches_in_position_order(
    subject: Subject, batch: int, expected: list[list[int]]
) -> None:
    # given positions 1..5
    five_events(subject)
    # when the log is scanned in batches
    batches = [list(rows) for rows in subject.store.scan(batch=batch)]
    # then every batch but the last is full, none is empty, and together they are the log
    assert [positions(rows) for rows in batches] == expected
    assert [row for rows in batches for row in plain(rows)] == subject.library_rows()


def test_scan_of_topics_yields_only_their_events_batched_by_matching_rows(
    subject: Subject,
) -> None:
    # given positions 1..7, t:changed at 3, 4, 5 and 7, then 4 deleted
    five_events(subject)
    subject.append((BOB, 1, "t:created", b"b1"), (BOB, 2, "t:changed", b"b2"))
    subject.delete([4])
    # when the log is scanned for some topics, in batches of two
    changed = [positions(rows) for rows in subject.store.scan(topics={"t:changed"}, batch=2)]
    two = [positions(rows) for rows in subject.store.scan(topics=["t:opened", "t:created"])]
    # then only their events come, in position order, in full batches of matching rows
    assert changed == [[3, 5], [7]]
    assert two == [[1, 2, 6]]
    assert list(subject.store.scan(topics={"t:nothing"})) == []


def test_scan_of_no_topics_yields_nothing(subject: Subject) -> None:
    # given a log
    five_events(subject)
    # when it is scanned for an empty collection of topics
    # then no event is of one of them (None, not an empty collection, means every topic)
    assert list(subject.store.scan(topics=[])) == []
    assert list(subject.store.scan(topics=frozenset())) == []


def test_scan_sees_the_log_as_it_is_when_each_batch_is_read(subject: Subject) -> None:
    # given a log of five scanned in batches of two
    five_events(subject)
    scan = subject.store.scan(batch=2)
    assert positions(next(scan)) == [1, 2]
    # when events are appended meanwhile
    subject.append((BOB, 1, "t:created", b"b1"))
    # then the scan goes on after the last row it yielded, to the new end
    assert [positions(rows) for rows in scan] == [[3, 4], [5, 6]]


# --- bad input ---------------------------------------------------------------------------------


def test_a_negative_read_limit_is_refused(subject: Subject) -> None:
    # given a log
    five_events(subject)
    # when / then a negative limit is refused, not read as "no limit" nor passed on
    with pytest.raises(ValueError, match="limit"):
        subject.store.read(1, -1)
    with pytest.raises(ValueError, match="limit"):
        subject.store.read(1, -1, stop=3)


@pytest.mark.parametrize("batch", [0, -1])
def test_a_scan_batch_below_one_is_refused_before_anything_is_read(
    subject: Subject, batch: int
) -> None:
    # given a log
    five_events(subject)
    # when / then a batch that could never make progress is refused at the call, rather
    # than a scan that ends at once as if the log were empty
    with pytest.raises(ValueError, match="batch"):
        subject.store.scan(batch=batch)
    with pytest.raises(ValueError, match="batch"):
        subject.store.scan(topics={"t:changed"}, batch=batch)


# --- position_of -------------------------------------------------------------------------------


def test_position_of_finds_a_stored_version_and_nothing_else(subject: Subject) -> None:
    # given positions 1..5, 4 deleted
    five_events(subject)
    subject.delete([4])
    # when positions of aggregate versions are asked for
    found = {
        (aggregate, version): subject.store.position_of(aggregate, version)
        for aggregate, version in [(ALICE, 1), (ALICE, 3), (ACME, 1), (ACME, 2), (ALICE, 4)]
    }
    missing = subject.store.position_of(BOB, 1)
    # then each stored version's position is given, and None for one not stored
    # (or None for all: unsupported, the caller reports "an unknown position")
    if not subject.supports("position_of"):
        assert set(found.values()) == {None}
        assert missing is None
        return
    assert found == {(ALICE, 1): 1, (ALICE, 3): 5, (ACME, 1): 2, (ACME, 2): None, (ALICE, 4): None}
    assert missing is None


# --- the actor check ---------------------------------------------------------------------------


def test_actor_check_reads_the_actors_newer_events_and_the_whole_aggregate(
    subject: Subject,
) -> None:
    # given alice's versions 1..3 and acme's 1..2, interleaved
    five_events(subject)
    # when the actor check asks for alice's events after version 1, and acme's
    read = subject.store.actor_and_aggregate(ALICE, 1, ACME)
    if not subject.supports("actor_and_aggregate"):
        assert read is None  # unsupported: the caller checks and loads separately
        return
    # then it gives alice's newer (version, topic) and acme's (version, topic, state),
    # each in version order
    assert read == (
        [(2, "t:changed"), (3, "t:changed")],
        [(1, "t:opened", b"c1"), (2, "t:changed", b"c2")],
    )
    _newer, events = read
    assert all(type(state) is bytes for _, _, state in events)


@pytest.mark.parametrize(
    ("after", "newer"),
    [
        (0, [(1, "t:created"), (2, "t:changed"), (3, "t:changed")]),  # every version
        (2, [(3, "t:changed")]),
        (3, []),  # the actor as last seen: nothing newer
        (9, []),
    ],
)
def test_actor_check_reads_versions_strictly_after_the_one_remembered(
    subject: Subject, after: int, newer: list[tuple[int, str]]
) -> None:
    # given alice's versions 1..3
    five_events(subject)
    # when the check asks for those after a version
    read = subject.store.actor_and_aggregate(ALICE, after, ACME)
    # then it gives the versions strictly after it
    if subject.supports("actor_and_aggregate"):
        assert read is not None
        assert read[0] == newer
    else:
        assert read is None


def test_actor_check_of_a_user_acting_on_herself_and_of_unknown_ids(subject: Subject) -> None:
    # given alice's versions 1..3
    five_events(subject)
    # when the actor is the aggregate itself, or either is unknown to the store
    herself = subject.store.actor_and_aggregate(ALICE, 2, ALICE)
    stranger = subject.store.actor_and_aggregate(BOB, 0, ACME)
    nothing = subject.store.actor_and_aggregate(ALICE, 0, BOB)
    if not subject.supports("actor_and_aggregate"):
        assert herself is stranger is nothing is None
        return
    # then each part is read on its own: her newer versions, and all of her events
    assert herself == (
        [(3, "t:changed")],
        [(1, "t:created", b"a1"), (2, "t:changed", b"a2"), (3, "t:changed", b"a3")],
    )
    # and an unknown actor has no events, an unknown aggregate none either
    assert stranger == ([], [(1, "t:opened", b"c1"), (2, "t:changed", b"c2")])
    assert nothing is not None
    assert nothing[1] == []
    assert len(nothing[0]) == 3


# --- the reset scan ----------------------------------------------------------------------------


def test_reset_scan_reads_every_event_of_the_topics_with_reset_states_only(
    subject: Subject,
) -> None:
    # given events of five topics (t:opened not among those read), with a gap
    five_events(subject)
    subject.append(
        (BOB, 1, "t:created", b"b1"), (BOB, 2, "t:reset", b"r1"), (ALICE, 4, "t:done", b"d1")
    )
    subject.delete([3])
    # when the reset scan reads the users' topics, with the state of reset topics only
    rows = subject.store.reset_scan(
        ["t:created", "t:changed", "t:reset", "t:done"], ["t:reset", "t:done"]
    )
    if not subject.supports("reset_scan"):
        assert rows is None  # unsupported: the campaign reads the scan instead
        return
    # then every event of those topics is there, in log order, ids as id_text writes
    # them, and a state only for reset topics; each row unpacks as a ResetRow (the
    # driver's own row, not necessarily a ResetRow: read by unpacking)
    assert rows is not None
    assert all(len(row) == 4 for row in rows)
    text = subject.store.id_text
    assert [tuple(row) for row in rows] == [
        (text(ALICE), 1, "t:created", None),
        (text(ACME), 2, "t:changed", None),
        (text(ALICE), 3, "t:changed", None),
        (text(BOB), 1, "t:created", None),
        (text(BOB), 2, "t:reset", b"r1"),
        (text(ALICE), 4, "t:done", b"d1"),
    ]
    assert all(type(row[2]) is str and type(row[1]) is int for row in rows)
    # and it holds what the plain scan of the same topics holds
    scanned = [
        (as_uuid(r.originator_id), r.originator_version, r.topic)
        for rows_ in subject.store.scan(topics={"t:created", "t:changed", "t:reset", "t:done"})
        for r in rows_
    ]
    assert [(uuid.UUID(row[0]), row[1], row[2]) for row in rows] == scanned


def test_reset_scan_of_no_topics_or_no_reset_topics(subject: Subject) -> None:
    # given a log
    five_events(subject)
    # when the reset scan is given no topics, or no reset topics
    none = subject.store.reset_scan([], ["t:changed"])
    stateless = subject.store.reset_scan(["t:changed"], [])
    if not subject.supports("reset_scan"):
        assert none is stateless is None
        return
    # then it reads nothing, or the events without any state
    assert none is not None
    assert list(none) == []
    assert stateless is not None
    assert [tuple(row) for row in stateless] == [
        (subject.store.id_text(ALICE), 2, "t:changed", None),
        (subject.store.id_text(ACME), 2, "t:changed", None),
        (subject.store.id_text(ALICE), 3, "t:changed", None),
    ]


def test_id_text_is_hex_on_sqlite_and_uuid_text_on_postgresql(subject: Subject) -> None:
    # given an aggregate id
    # when it is written as the reset scan writes ids
    text = subject.store.id_text(ALICE)
    # then it is the form the database holds (SQLite: 32 hex digits; PostgreSQL: the
    # canonical UUID text), and RecorderLog, which has no reset scan, writes str(uuid)
    if not subject.native:
        assert text == str(ALICE)
    elif subject.backend == "sqlite":
        assert text == ALICE.hex
    else:
        assert text == str(ALICE)
    assert uuid.UUID(text) == ALICE


# --- insert ------------------------------------------------------------------------------------


def test_inserted_events_read_back_as_the_librarys_recorder_reads_them(subject: Subject) -> None:
    # given a log of five
    five_events(subject)
    # when pre-encoded events are inserted in one call, two sharing one state object,
    # one whose state is not text (as a cipher's or a compressor's is not)
    shared = b'{"campaign_id":"c1"}'
    binary = b"\x00\xff\x80\x00b1"
    subject.store.insert(
        [
            StoredEvent(ALICE, 4, "t:reset", shared),
            StoredEvent(BOB, 1, "t:created", binary),
            StoredEvent(ACME, 3, "t:reset", shared),
        ]
    )
    # then they follow the head in the order given, and the port, the library's
    # notifications and the library's per-aggregate read all agree on them
    rows = plain(subject.store.read(6, 100))
    assert rows == [
        (6, ALICE, 4, "t:reset", shared),
        (7, BOB, 1, "t:created", binary),
        (8, ACME, 3, "t:reset", shared),
    ]
    assert plain(subject.store.read(1, 100)) == subject.library_rows()
    assert subject.store.head() == 8
    stored = subject.recorder.select_events(ALICE, gt=3)
    assert [
        (as_uuid(s.originator_id), s.originator_version, s.topic, bytes(s.state)) for s in stored
    ] == [(ALICE, 4, "t:reset", shared)]
    # and the other reads see them too
    if subject.supports("position_of"):
        assert subject.store.position_of(BOB, 1) == 7
    resets = subject.store.reset_scan(["t:reset"], ["t:reset"])
    if subject.supports("reset_scan"):
        assert resets is not None
        assert [tuple(row)[1:] for row in resets] == [
            (4, "t:reset", shared),
            (3, "t:reset", shared),
        ]


def test_inserting_nothing_stores_nothing(subject: Subject) -> None:
    # given a log of five
    five_events(subject)
    # when nothing is inserted
    subject.store.insert([])
    # then the log is as it was
    assert subject.store.head() == 5
    assert len(subject.store.read(1, 100)) == 5


@pytest.mark.parametrize(
    "conflict",
    [
        StoredEvent(ALICE, 3, "t:changed", b"again"),  # a version already stored
        StoredEvent(BOB, 1, "t:created", b"twice"),  # a version twice in the batch
    ],
    ids=["stored-version", "version-twice-in-batch"],
)
def test_an_insert_with_a_version_conflict_raises_integrity_error_and_stores_nothing(
    subject: Subject, conflict: StoredEvent
) -> None:
    # given a log of five
    five_events(subject)
    before = subject.library_rows()
    # when a batch holding a version conflict is inserted
    with pytest.raises(IntegrityError):
        subject.store.insert(
            [
                StoredEvent(BOB, 1, "t:created", b"b1"),
                StoredEvent(ACME, 3, "t:changed", b"c3"),
                conflict,
            ]
        )
    # then the library's IntegrityError is raised (as a save's), and none of the
    # batch is stored
    assert subject.library_rows() == before
    assert subject.store.head() == 5


# --- RecorderLog: the fallback -----------------------------------------------------------------


def test_recorder_log_answers_unsupported_operations_with_none_on_a_full_store(
    fallback: Subject,
) -> None:
    # given RecorderLog over a store holding every version asked about
    five_events(fallback)
    # when the optional operations are asked
    # then each answers None: unsupported, the caller falls back, whatever is stored
    assert fallback.store.position_of(ALICE, 1) is None
    assert fallback.store.actor_and_aggregate(ALICE, 0, ACME) is None
    assert fallback.store.reset_scan(["t:created"], ["t:created"]) is None
    # and what it does support it answers from the library's recorder
    assert plain(fallback.store.read(1, 100)) == fallback.library_rows()
    assert fallback.store.head() == 5


def test_log_store_gives_any_other_recorder_the_library_path() -> None:
    # given a recorder of neither SQLite nor PostgreSQL (the library's in-memory one)
    from eventsourcing.popo import POPOApplicationRecorder

    recorder = POPOApplicationRecorder()
    # when the port is asked for it
    store = log_store(recorder)
    # then it is RecorderLog, which reads what the recorder holds
    assert type(store) is RecorderLog
    recorder.insert_events([StoredEvent(ALICE, 1, "t:created", b"a1")])
    assert plain(store.read(1, 10)) == [(1, ALICE, 1, "t:created", b"a1")]
    assert store.head() == 1
