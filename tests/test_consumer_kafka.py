"""The consumer runtime end to end against the real broker: messages published as the relay
publishes them, consumed in a group by the reactions consumer, on SQLite and PostgreSQL
consumer stores. Each action exactly once; a redelivery changes nothing; a gap is
recorded; what cannot be handled lands in the dead-letter topic with its reason, and the
consumer goes on."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from consumer_support import header, publish, store_location
from kafka_broker import FAST_FETCH, FAST_GROUP_JOIN, KafkaBroker
from util import wait_for

from consumers import ConsumerApp, ConsumerStore, Delivered, RunOptions, Tx
from consumers import reactions as r
from consumers.runner import run_in_thread
from consumers.testing import Message, message
from contracts.payloads import (
    AccountOpened,
    AllowlistEntryAdded,
    ApiKeyCreated,
    ApiKeyRevoked,
    DkimKeyActivated,
    EventData,
    LoginFailed,
    PasswordChanged,
    PasswordResetRequired,
    SecondFactorRemoved,
    UserLocked,
    UserRegistered,
)

OPTIONS = RunOptions(
    consumer_config={**FAST_GROUP_JOIN, **FAST_FETCH}, backoff_s=0.05, max_backoff_s=0.2
)


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return store_location(backend, tmp_path, request)


@pytest.fixture
def app(location: str) -> Iterator[ConsumerApp]:
    consumer = r.open_app(location)
    yield consumer
    consumer.store.close()


@dataclass
class Story:
    """Messages of a few accounts, in each account's order, and the actions they call for."""

    messages: list[Message] = field(default_factory=list)
    expected: set[tuple[str, str]] = field(default_factory=set)  # (ce_id, kind)
    position: int = 0
    sequences: dict[uuid.UUID, int] = field(default_factory=dict)

    def add(
        self, data: EventData, aggregate: uuid.UUID, version: int, account: uuid.UUID, *kinds: str
    ) -> Message:
        self.position += 1
        self.sequences[account] = self.sequences.get(account, 0) + 1
        sent = message(
            data,
            aggregate_id=aggregate,
            version=version,
            account_id=account,
            sequence=self.sequences[account],
            position=self.position,
        )
        self.messages.append(sent)
        self.expected.update((sent.ce_id, kind) for kind in kinds)
        return sent

    def account(self, name: str) -> None:
        """One account's life: opened, a user, keys, factors, allowlist, DKIM, a reset."""
        a, u = uuid.uuid4(), uuid.uuid4()
        self.add(AccountOpened(name=name, kind="customer", display_name=name), a, 1, a)
        self.add(
            UserRegistered(account_id=a, username=f"{name}-owner", email="o@x.test", role="owner"),
            u,
            1,
            a,
        )
        key = ApiKeyCreated(key_id=f"ak_{name}", name="ci", scopes=["send"], display="ak_…")
        self.add(key, a, 2, a, r.NOTIFY_CUSTOMER)
        self.add(PasswordChanged(), u, 2, a, r.REVOKE_USER_SESSIONS)
        removed = SecondFactorRemoved(factor_id="f1", kind="totp", reason="lost")
        self.add(removed, u, 3, a, r.NOTIFY_CUSTOMER)
        entry = AllowlistEntryAdded(entry_id="e1", cidr="203.0.113.0/24", label="office")
        self.add(entry, a, 3, a, r.NOTIFY_CUSTOMER)
        self.add(
            ApiKeyRevoked(key_id=f"ak_{name}", reason="leaked"), a, 4, a, r.REVOKE_API_KEY_GRANTS
        )
        self.add(
            DkimKeyActivated(domain=f"{name}.test", selector="s1"), a, 5, a, r.RELOAD_SIGNING_KEYS
        )
        reset = PasswordResetRequired(reason="breach", campaign_id="c1")
        self.add(reset, u, 4, a, r.REVOKE_USER_SESSIONS, r.NOTIFY_CUSTOMER)
        self.add(UserLocked(failed_logins=5), u, 5, a, r.REVOKE_USER_SESSIONS)
        self.add(LoginFailed(reason="user_locked", counts_toward_lockout=False), u, 6, a)


def story(accounts: int) -> Story:
    built = Story()
    for i in range(accounts):
        built.account(f"acct{i}")
    return built


def actions_of(store: ConsumerStore) -> list[tuple[str, str]]:
    return [(a.ce_id, a.kind) for a in r.list_actions(store)]


def stop(running: tuple[Any, Any, dict[str, Any]]) -> Any:
    thread, event, out = running
    event.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    return out["summary"]


def committed(broker: KafkaBroker, group: str) -> int:
    """The group's committed offsets, summed over the partitions (messages consumed)."""
    offsets = broker.admin().list_group_offsets(group)[group]
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def test_published_events_become_actions_exactly_once(
    kafka_broker: KafkaBroker, app: ConsumerApp, location: str
) -> None:
    # given a story of three accounts on a 3-partition topic
    topic = kafka_broker.create_topic(3)
    told = story(3)
    publish(kafka_broker.bootstrap, topic, told.messages)
    ids = {m.ce_id for m in told.messages}
    # when the reactions consumer runs in a group
    group = f"reactions-{uuid.uuid4().hex[:6]}"
    running = run_in_thread(app, kafka_broker.bootstrap, topic, group, options=OPTIONS)
    assert wait_for(lambda: app.handled_ids() == ids, timeout=60), len(app.handled_ids())
    # then every action the story calls for is there, once
    assert sorted(actions_of(app.store)) == sorted(told.expected)
    # when every message is published again (a relay's re-publish after a crash)
    publish(kafka_broker.bootstrap, topic, told.messages)
    assert wait_for(lambda: app.status().count("duplicate") == len(told.messages), timeout=60)
    # then nothing changed
    assert sorted(actions_of(app.store)) == sorted(told.expected)
    summary = stop(running)
    assert summary.outcomes["duplicate"] == len(told.messages)
    # and the graceful stop committed everything it handled
    assert committed(kafka_broker, group) == 2 * len(told.messages)
    status = app.status()
    assert status.count("gaps") == 0
    assert status.count("handled") + status.count("no_handler") == len(told.messages)

    # when the consumer starts again in the same group (a new process: a new store object)
    again = r.open_app(location)
    try:
        more = Story(sequences=dict(told.sequences), position=told.position)
        account = next(iter(told.sequences))
        late = more.add(PasswordChanged(), uuid.uuid4(), 1, account, r.REVOKE_USER_SESSIONS)
        running = run_in_thread(again, kafka_broker.bootstrap, topic, group, options=OPTIONS)
        publish(kafka_broker.bootstrap, topic, [late])
        assert wait_for(lambda: late.ce_id in again.handled_ids(), timeout=60)
        summary = stop(running)
        # then it resumed after the committed offsets: only the new message was read
        assert summary.messages == 1
        assert len(actions_of(again.store)) == len(told.expected) + 1
    finally:
        again.store.close()


def test_a_gap_in_an_accounts_sequence_is_recorded_and_a_late_event_handled(
    kafka_broker: KafkaBroker, app: ConsumerApp
) -> None:
    # given events 1, 2 and 4 of an account (3 is held back)
    topic = kafka_broker.create_topic(1)
    told = story(1)
    first, second, third, fourth = told.messages[:4]
    publish(kafka_broker.bootstrap, topic, [first, second, fourth])
    running = run_in_thread(app, kafka_broker.bootstrap, topic, "gaps", options=OPTIONS)
    # then the gap is recorded with what was expected and what came
    assert wait_for(lambda: fourth.ce_id in app.handled_ids(), timeout=60)
    status = app.status()
    assert status.count("gaps") == 1
    [gap] = status.gaps
    assert (gap.expected, gap.got, gap.ce_id, gap.topic, gap.offset) == (
        3,
        4,
        fourth.ce_id,
        topic,
        2,
    )
    # and the event after the gap was handled
    assert (fourth.ce_id, r.REVOKE_USER_SESSIONS) in actions_of(app.store)
    # when the missing event arrives late, it is handled too
    publish(kafka_broker.bootstrap, topic, [third])
    assert wait_for(lambda: third.ce_id in app.handled_ids(), timeout=60)
    assert app.status().count("late_arrivals") == 1
    assert (third.ce_id, r.NOTIFY_CUSTOMER) in actions_of(app.store)
    stop(running)


def test_what_cannot_be_handled_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(
    kafka_broker: KafkaBroker, app: ConsumerApp
) -> None:
    # given a consumer whose UserLocked handler always fails (the mailer is down)
    @app.handles(UserLocked)
    def fail(event: Delivered[UserLocked], tx: Tx) -> None:
        raise ConnectionError("the session store refused")

    topic = kafka_broker.create_topic(1)
    told = story(1)
    good = told.messages
    locked = next(m for m in good if b"User.UserLocked" in m.value)
    value = json.loads(good[3].value)
    value["data"]["extra"] = 1
    bad = {
        "malformed_value": good[3].with_value(b"{not json"),
        "headers_invalid": good[3].with_headers({"ce_id": None}),
        "unknown_event_type": good[3].with_headers(
            {"ce_type": b"io.secstate.user.password_teleported.v1"}
        ),
        "unknown_version": good[3].with_headers(
            {"ce_type": b"io.secstate.user.password_changed.v7"}
        ),
        "payload_invalid": good[3].with_value(json.dumps(value).encode()),
        # the same aggregate, another version: the headers describe another event
        "headers_mismatch": good[3].with_headers(
            {"ce_id": good[3].ce_id.replace(":2", ":99").encode()}
        ),
    }
    # when the bad messages come between the good ones
    sent = [*good[:3], *bad.values(), *good[3:]]
    publish(kafka_broker.bootstrap, topic, sent)
    running = run_in_thread(app, kafka_broker.bootstrap, topic, "dlq", options=OPTIONS)
    # then every good message but the failing one is handled, after the bad ones too
    handled = {m.ce_id for m in good} - {locked.ce_id}
    assert wait_for(lambda: handled <= app.handled_ids(), timeout=60)
    assert wait_for(lambda: app.status().count("dead_lettered") == len(bad) + 1, timeout=60)
    summary = stop(running)
    # and the dead-letter topic has each bad one with its reason, where it came from, and
    # the handler's failure after its attempts
    records = kafka_broker.read(f"{topic}.dlq", len(bad) + 1)
    reasons = {header(rec, "dlq_reason"): rec for rec in records}
    assert set(reasons) == {*bad, "handler_failed"}
    for reason, rec in reasons.items():
        offset = sent.index(bad[reason]) if reason in bad else sent.index(locked)
        assert header(rec, "dlq_topic") == topic
        assert header(rec, "dlq_partition") == "0"
        assert header(rec, "dlq_offset") == str(offset)
        assert header(rec, "dlq_consumer") == "reactions"
        assert rec.value == (bad.get(reason, locked)).value
        assert header(rec, "dlq_detail")
    failed = reasons["handler_failed"]
    assert header(failed, "dlq_attempts") == "3"
    assert "ConnectionError: the session store refused" in (header(failed, "dlq_detail") or "")
    assert "not JSON" in (header(reasons["malformed_value"], "dlq_detail") or "")
    assert "ce_id" in (header(reasons["headers_invalid"], "dlq_detail") or "")
    # the failed event counts as seen: no gap after it, and a redelivery is skipped
    status = app.status()
    assert status.count("gaps") == 0
    assert locked.ce_id in app.handled_ids()
    assert {d.reason for d in status.dead_letters} == {*bad, "handler_failed"}
    assert summary.dead_lettered == len(bad) + 1
    # no action of the locked user's sessions was queued: the transaction rolled back
    assert (locked.ce_id, r.REVOKE_USER_SESSIONS) not in actions_of(app.store)


def test_a_member_joining_takes_partitions_over_without_a_message_handled_twice(
    kafka_broker: KafkaBroker, app: ConsumerApp, location: str
) -> None:
    # given one member working through a story slowly, a few messages per poll
    topic = kafka_broker.create_topic(4)
    told = story(8)
    publish(kafka_broker.bootstrap, topic, told.messages)
    ids = {m.ce_id for m in told.messages}

    joined = threading.Event()  # set when the second member handled its first message

    def slowly(delivered: Delivered[Any], result: Any) -> None:
        if not joined.is_set():  # the first works slowly until the second has a share
            time.sleep(0.2)

    def arrived(delivered: Delivered[Any], result: Any) -> None:
        joined.set()

    options = replace(OPTIONS, max_poll_records=5, after_transaction=slowly)
    group = f"join-{uuid.uuid4().hex[:6]}"
    first = run_in_thread(app, kafka_broker.bootstrap, topic, group, options=options)
    assert wait_for(lambda: len(app.handled_ids()) >= 5, timeout=60)
    # when a second member joins the group (its own store object on the same database)
    other = r.open_app(location)
    try:
        joining = replace(options, after_transaction=arrived)
        second = run_in_thread(other, kafka_broker.bootstrap, topic, group, options=joining)
        assert wait_for(lambda: app.handled_ids() == ids, timeout=120)
        one, two = stop(first), stop(second)
    finally:
        other.store.close()
    # then the partitions were shared, what was done was committed before they moved,
    # and no message was handled twice
    assert one.rebalances >= 1
    assert one.messages > 0
    assert two.messages > 0
    assert app.status().count("duplicate") == 0
    assert one.messages + two.messages == len(told.messages)
    assert sorted(actions_of(app.store)) == sorted(told.expected)


def test_a_downstream_consumer_in_a_dozen_lines(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # given a story on a topic
    topic = kafka_broker.create_topic(2)
    told = story(2)
    publish(kafka_broker.bootstrap, topic, told.messages)
    # when a downstream team writes its own consumer with the SDK (the docstring's example)
    from consumers import ConsumerApp, ConsumerStore

    app = ConsumerApp("sessions", store=ConsumerStore.open(tmp_path / "sessions.db"))
    app.tables("CREATE TABLE IF NOT EXISTS revoked (user_id TEXT PRIMARY KEY, at TEXT)")

    @app.handles(PasswordChanged, UserLocked)
    def revoke_sessions(event: Delivered[PasswordChanged | UserLocked], tx: Tx) -> None:
        tx.execute(
            "INSERT INTO revoked VALUES (?, ?) ON CONFLICT DO NOTHING",
            (str(event.aggregate_id), event.event.occurred_at.isoformat()),
        )

    running = run_in_thread(app, kafka_broker.bootstrap, topic, "sessions", options=OPTIONS)
    ids = {m.ce_id for m in told.messages}
    try:
        assert wait_for(lambda: app.handled_ids() == ids, timeout=60)
    finally:
        stop(running)
    # then its table has what it wrote: each user whose sessions must go, once
    with app.store.reading() as tx:
        revoked = tx.query_all("SELECT user_id FROM revoked")
    users = {
        json.loads(m.value)["aggregate_id"] for m in told.messages if b"User.UserLocked" in m.value
    }
    assert {row[0] for row in revoked} == users
    app.store.close()


def test_a_redelivered_bad_message_is_not_dead_lettered_twice(
    kafka_broker: KafkaBroker, app: ConsumerApp, location: str
) -> None:
    # given a topic with a good message and a bad one, consumed once
    topic = kafka_broker.create_topic(1)
    good = story(1).messages[:2]
    bad = good[1].with_value(b"\xff")
    publish(kafka_broker.bootstrap, topic, [good[0], bad, good[1]])
    running = run_in_thread(app, kafka_broker.bootstrap, topic, "first", options=OPTIONS)
    assert wait_for(lambda: app.status().count("dead_lettered") == 1, timeout=60)
    assert wait_for(lambda: {m.ce_id for m in good} <= app.handled_ids(), timeout=60)
    stop(running)
    # when everything is delivered again (another group over the same store: as after a
    # crash before any commit)
    again = r.open_app(location)
    try:
        running = run_in_thread(again, kafka_broker.bootstrap, topic, "second", options=OPTIONS)
        assert wait_for(lambda: again.status().count("duplicate") == 2, timeout=60)
        summary = stop(running)
    finally:
        again.store.close()
    # then the bad one was recognised and not sent again
    assert summary.messages == 3
    assert summary.dead_lettered == 0
    assert len(kafka_broker.read(f"{topic}.dlq", 1)) == 1
    with pytest.raises(TimeoutError):
        kafka_broker.read(f"{topic}.dlq", 2, timeout_s=2)


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_dropped_database_connection_is_opened_again_and_nothing_is_lost(
    kafka_broker: KafkaBroker, app: ConsumerApp, location: str, backend: str
) -> None:
    # given a consumer that handled the first half of a story
    topic = kafka_broker.create_topic(2)
    told = story(4)
    half = len(told.messages) // 2
    publish(kafka_broker.bootstrap, topic, told.messages[:half])
    watcher = r.open_app(location)  # the test's own connection
    try:
        with app.store.reading() as tx:
            pid = tx.query_one("SELECT pg_backend_pid()")[0]
        running = run_in_thread(app, kafka_broker.bootstrap, topic, "drop", options=OPTIONS)
        first = {m.ce_id for m in told.messages[:half]}
        assert wait_for(lambda: first <= watcher.handled_ids(), timeout=60)
        # when the server drops its connection, and more events come
        with watcher.store.reading() as tx:
            assert tx.query_one("SELECT pg_terminate_backend(?)", (pid,))[0]
        publish(kafka_broker.bootstrap, topic, told.messages[half:])
        # then it connects again and handles them, each action once
        ids = {m.ce_id for m in told.messages}
        assert wait_for(lambda: watcher.handled_ids() == ids, timeout=60)
        stop(running)
        assert sorted(actions_of(watcher.store)) == sorted(told.expected)
        assert watcher.status().count("dead_lettered") == 0
    finally:
        watcher.store.close()
