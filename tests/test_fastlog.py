"""The rebuild's fast path (projections.fastlog), on SQLite and PostgreSQL.

A rebuild reads stored rows straight from the ledger's table and decodes our own events
without the library's JSON object hook. It must make exactly the events the ledger's
mapper makes, refuse topics outside secstate's before importing them, and so give views
byte for byte the rows the ordinary (incremental) follower gives them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from eventsourcing.persistence import Notification, StoredEvent

from domain.commands import OpenAccount
from domain.context import RequestContext
from domain.decoder import EventDecoder
from domain.errors import DamagedHistoryError
from domain.ledger import Ledger
from domain.ports import RawRow
from projections.errors import ProjectionFailedError, UntrustedTopicError
from projections.follower import view_follower
from projections.rebuild import rebuild, rebuild_together
from projections.state import StateView
from projections.timeline import TimelineView
from secstate.bootstrap import build_ledger, open_view_db
from secstate.demo import DemoOptions, run_demo
from secstate.settings import Settings
from store.viewdb import ViewDB

DEMO = DemoOptions(accounts=30, weeks=6, employees=6, seed=11)  # ~2,000 events, 27 types
VIEW_TABLES = {
    "state": ("state_accounts", "state_users"),
    "timeline": ("timeline", "timeline_touch", "timeline_ids"),
}
OPENED = "secstate.Account.ControlPanelAccessAllowed"


@pytest.fixture
def demo_ledger(settings: Settings) -> Iterator[Ledger]:
    run_demo(settings, DEMO)
    ledger = build_ledger(settings)
    yield ledger
    ledger.close()


def whole_log(ledger: Ledger) -> list[RawRow]:
    reader = ledger.log_store
    rows: list[RawRow] = []
    start = 1
    while batch := reader.read(start, 997):
        rows.extend(batch)
        start = batch[-1][0] + 1
    return rows


def by_mapper(ledger: Ledger, row: RawRow) -> Any:
    position, originator_id, version, topic, state = row
    if isinstance(originator_id, str):
        originator_id = uuid.UUID(originator_id)
    return ledger.mapper.to_domain_event(
        Notification(
            id=position,
            originator_id=originator_id,
            originator_version=version,
            topic=topic,
            state=bytes(state),
        )
    )


def same_event(a: Any, b: Any) -> bool:
    """Same class, same attributes with the same values in the same order."""
    return (
        type(a) is type(b)
        and list(a.__dict__.items()) == list(b.__dict__.items())
        and all(type(a.__dict__[k]) is type(v) for k, v in b.__dict__.items())
    )


def dump(db: ViewDB, tables: Sequence[str]) -> dict[str, list[str]]:
    with db.reading() as tx:
        return {
            t: sorted(repr(tuple(r)) for r in tx.query_all(f"SELECT * FROM {t}"))  # noqa: S608
            for t in tables
        }


def synthetic(topic: str, state: str, position: int = 1) -> RawRow:
    return (position, uuid.uuid4().hex, 1, topic, state.encode())


def test_reader_returns_every_stored_event_in_log_order(demo_ledger: Ledger) -> None:
    # given a demo history
    head = int(demo_ledger.recorder.max_notification_id() or 0)
    # when the reader reads it in batches
    rows = whole_log(demo_ledger)
    # then it holds every notification, in order, with the recorder's ids and topics
    notifications = demo_ledger.recorder.select_notifications(start=1, limit=head + 1)
    assert [(r[0], r[3]) for r in rows] == [(n.id, n.topic) for n in notifications]
    assert [bytes(r[4]) for r in rows] == [n.state for n in notifications]


def test_decoder_makes_the_mappers_event_for_every_event_of_a_demo_history(
    demo_ledger: Ledger,
) -> None:
    # given every stored event of a demo history
    rows = whole_log(demo_ledger)
    assert len({row[3] for row in rows}) >= 25
    decoder = EventDecoder(demo_ledger.mapper)
    assert decoder.shortcut
    # when each is decoded by the fast decoder and by the ledger's mapper
    # then both make the same event
    mismatched = [
        row[0] for row in rows if not same_event(decoder.decode(row), by_mapper(demo_ledger, row))
    ]
    assert mismatched == []


@pytest.mark.parametrize(
    "state",
    [
        # an escaped character in a key: "\u005ftype_" is "_type_" to the object hook
        '{"ip":"1.2.3.4","entry_id":{"\\u005ftype_":"uuid_hex",'
        '"_data_":"6b6aba9544b2568db9feb287286ed726"}}',
        # a transcoded value below the top level
        '{"ip":"1.2.3.4","entry_id":[{"_type_":"uuid_hex",'
        '"_data_":"6b6aba9544b2568db9feb287286ed726"}]}',
        # a string equal to the marker, and an object shaped almost like a transcoded one
        '{"ip":"_type_","entry_id":{"_type_":"uuid_hex","other":1}}',
        # whitespace around the object
        ' {"ip":"1.2.3.4","entry_id":null} ',
        # an escaped character in a value that still fits the class
        '{"ip":"\\u0031.2.3.4","entry_id":"ale_\\u0030"}',
    ],
)
def test_decoder_hands_what_its_shortcut_cannot_read_exactly_to_the_mapper(
    ledger: Ledger, state: str
) -> None:
    # given a stored event the shortcut does not decode the way the object hook would
    common = (
        '"timestamp":{"_type_":"datetime_iso","_data_":"2026-03-01T09:00:00+00:00"},'
        '"actor_kind":"system","actor_id":"t","source_ip":null,"user_agent":null,'
        '"request_id":"r","occurred_at":{"_type_":"datetime_iso",'
        '"_data_":"2026-03-01T09:00:00+00:00"},'
    )
    row = synthetic(OPENED, state.replace("{", "{" + common, 1))
    # when it is decoded by both
    try:
        expected = by_mapper(ledger, row)
    except DamagedHistoryError:
        # then a state that does not fit its class is refused by both, naming the row
        with pytest.raises(DamagedHistoryError, match=r"field entry_id"):
            EventDecoder(ledger.mapper).decode(row)
        return
    # then it is the mapper's event
    assert same_event(EventDecoder(ledger.mapper).decode(row), expected)


def test_decoder_refuses_a_topic_outside_secstate_before_importing_it(ledger: Ledger) -> None:
    # given a stored event naming a module of someone else's choosing
    row = synthetic("os:system", "{}", position=7)
    # when / then it is refused, naming the position and the topic
    with pytest.raises(UntrustedTopicError, match=r"position 7.*'os:system'"):
        EventDecoder(ledger.mapper).decode(row)


def test_rebuild_refuses_an_untrusted_topic_and_leaves_the_live_view_alone(
    settings: Settings, demo_ledger: Ledger
) -> None:
    # given views following a demo history, then an event with a foreign topic stored
    db = open_view_db(settings, "timeline")
    try:
        follower = view_follower(demo_ledger, TimelineView(), db)
        follower.catch_up()
        before = dump(db, VIEW_TABLES["timeline"])
        demo_ledger.recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "builtins:dict", b"{}")])
        # when the view is rebuilt
        with pytest.raises(ProjectionFailedError) as failed:
            rebuild(follower)
        # then the rebuild stops at that event, without importing it, and the live view
        # is as it was
        assert isinstance(failed.value.cause, UntrustedTopicError)
        assert failed.value.position == follower.head()
        assert dump(db, VIEW_TABLES["timeline"]) == before
    finally:
        db.close()


def test_rebuilt_views_are_byte_identical_to_the_incremental_ones_on_a_demo_history(
    demo_ledger: Ledger, settings: Settings
) -> None:
    # given the state and timeline views built by the ordinary follower (the mapper's
    # events, small batches), in their own files or schema
    dbs = {name: open_view_db(settings, name) for name in VIEW_TABLES}
    try:
        views = {"state": StateView(), "timeline": TimelineView()}
        followers = [view_follower(demo_ledger, views[n], dbs[n], batch_size=150) for n in dbs]
        for follower in followers:
            follower.catch_up()
        incremental = {name: dump(db, VIEW_TABLES[name]) for name, db in dbs.items()}
        # when both are rebuilt by the fast path, from one scan
        position = rebuild_together(followers)
        # then every row of every table is the same, and the positions too
        assert position == followers[0].head()
        for name, db in dbs.items():
            assert dump(db, VIEW_TABLES[name]) == incremental[name], name
        assert [f.position() for f in followers] == [position, position]
    finally:
        for db in dbs.values():
            db.close()


AWKWARD = "agent\twith\ttabs\nnew lines \\ back\\slashes 'single' \"double\" \\N é 😀"


def test_awkward_text_reads_back_the_same_whether_inserted_or_copied(
    ledger: Ledger, settings: Settings
) -> None:
    # given events whose user agent holds tabs, newlines, backslashes and quotes (names may
    # not hold control characters, but backslashes and quotes they may)
    for k in range(3):
        ctx = RequestContext(source_ip="2001:db8::7", user_agent=f"{AWKWARD} {k}")
        name = AWKWARD.replace("\t", " ").replace("\n", " ")
        ledger.open_account(OpenAccount(name=f"awkward-{k}", display_name=name), ctx)
    db = open_view_db(settings, "timeline")
    try:
        # when the timeline follows them one at a time (one-row batches are INSERTed)
        follower = view_follower(ledger, TimelineView(), db, batch_size=1)
        follower.catch_up()
        one_by_one = dump(db, VIEW_TABLES["timeline"])
        # and is rebuilt (a batch of several rows: PostgreSQL COPYs it)
        rebuild(follower)
        # then the rows are the same, and the text is as it was given
        assert dump(db, VIEW_TABLES["timeline"]) == one_by_one
        with db.reading() as tx:
            agents = [
                r[0] for r in tx.query_all("SELECT user_agent FROM timeline ORDER BY position")
            ]
        assert agents == [f"{AWKWARD} {k}" for k in range(3)]
    finally:
        db.close()
