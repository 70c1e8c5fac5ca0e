"""The consumer SDK without a broker: reading a message into a typed delivery (or the
named reason it cannot be), and handling it once, in order, in the store's transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_support import store_location

from consumers import ConsumerApp, ConsumerStore, Delivered, Outcome, Rejected, Tx, decode
from consumers.delivery import HEADERS_INVALID, HEADERS_MISMATCH, MALFORMED_VALUE
from consumers.testing import delivery, message
from contracts.payloads import (
    ApiKeyRevoked,
    LoginSucceeded,
    PasswordChanged,
    UserLocked,
)

ACCOUNT = uuid.uuid4()


@pytest.fixture
def consumer_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return store_location(backend, tmp_path, request)


@pytest.fixture
def consumer_store(consumer_location: str) -> Iterator[ConsumerStore]:
    store = ConsumerStore.open(consumer_location)
    yield store
    store.close()


USER = uuid.uuid4()


def password_changed(version: int = 2, sequence: int = 1, **kw: Any) -> Any:
    return message(
        PasswordChanged(),
        aggregate_id=kw.pop("aggregate_id", USER),
        version=version,
        account_id=ACCOUNT,
        sequence=sequence,
        **kw,
    )


# --- decode: a typed delivery, or the named reason -------------------------------------------


def test_a_message_as_the_relay_sends_it_decodes_into_its_model() -> None:
    # given a PasswordChanged message
    sent = password_changed(version=4, sequence=7, position=42)
    # when it is decoded
    got = decode(sent.headers, sent.value, sent.key, topic="t", partition=1, offset=9)
    # then it is a typed delivery with every attribute
    assert isinstance(got, Delivered)
    assert isinstance(got.data, PasswordChanged)
    assert got.ce_id == f"{USER}:4" == sent.ce_id
    assert got.ce_type == "io.secstate.user.password_changed.v1"
    assert (got.sequence, got.position, got.partition_key) == (7, 42, str(ACCOUNT))
    assert (got.topic, got.partition, got.offset) == ("t", 1, 9)
    assert got.account_id == ACCOUNT
    assert got.aggregate_id == USER


def rejected(sent: Any, value: bytes | None = None) -> Rejected:
    got = decode(sent.headers, sent.value if value is None else value, sent.key)
    assert isinstance(got, Rejected), got
    return got


@pytest.mark.parametrize(
    ("change", "reason", "mentions"),
    [
        ({"ce_id": None}, HEADERS_INVALID, "ce_id"),
        ({"ce_specversion": b"0.3"}, HEADERS_INVALID, "ce_specversion"),
        ({"ce_accountseq": b"-1"}, HEADERS_INVALID, "ce_accountseq"),
        ({"ce_time": b"yesterday"}, HEADERS_INVALID, "ce_time"),
        ({"content-type": b"text/plain"}, HEADERS_INVALID, "content-type"),
        ({"ce_type": b"io.secstate.user.password_teleported.v1"}, "unknown_event_type", ""),
        ({"ce_type": b"com.example.thing.v1"}, HEADERS_INVALID, "ce_type"),
        ({"ce_type": b"io.secstate.user.password_changed.v9"}, "unknown_version", "v9"),
        ({"ce_type": b"io.secstate.user.user_locked.v1"}, "payload_invalid", "failed_logins"),
        ({"ce_partitionkey": str(uuid.uuid4()).encode()}, HEADERS_MISMATCH, "partitionkey"),
    ],
)
def test_a_bad_header_is_named(change: dict[str, bytes | None], reason: str, mentions: str) -> None:
    got = rejected(password_changed().with_headers(change))
    assert got.reason == reason
    assert mentions in got.detail


def test_a_value_that_is_not_json_is_malformed() -> None:
    got = rejected(password_changed(), b"\x00not json{")
    assert (got.reason, got.ce_id) == (MALFORMED_VALUE, f"{USER}:2")


def test_a_message_without_a_value_is_malformed() -> None:
    sent = password_changed()
    assert decode(sent.headers, None, sent.key) == Rejected(
        MALFORMED_VALUE, "the message has no value", sent.ce_id
    )


def test_a_schema_violation_is_payload_invalid() -> None:
    # given a UserLocked value whose failed_logins is text, not an integer
    sent = message(UserLocked(failed_logins=5), aggregate_id=USER, account_id=ACCOUNT)
    value = json.loads(sent.value)
    value["data"]["failed_logins"] = "5"
    got = rejected(sent, json.dumps(value).encode())
    assert got.reason == "payload_invalid"
    assert "failed_logins" in got.detail


def test_an_unknown_field_is_a_schema_violation() -> None:
    sent = password_changed()
    value = json.loads(sent.value)
    value["data"]["password_hash"] = "$argon2id$..."
    assert rejected(sent, json.dumps(value).encode()).reason == "payload_invalid"


def test_a_value_of_another_event_than_the_header_says_is_a_mismatch() -> None:
    sent = password_changed(version=2)
    other = password_changed(version=3)
    got = rejected(sent, other.value)
    assert got.reason == HEADERS_MISMATCH
    assert "ce_id" in got.detail


def test_a_key_other_than_the_partition_key_is_a_mismatch() -> None:
    sent = password_changed()
    got = decode(sent.headers, sent.value, b"someone-else")
    assert isinstance(got, Rejected)
    assert got.reason == HEADERS_MISMATCH


# --- registration ------------------------------------------------------------------------


def test_handlers_are_registered_by_payload_class(consumer_store: ConsumerStore) -> None:
    app = ConsumerApp("t", store=consumer_store)

    @app.handles(PasswordChanged, UserLocked)
    def h(event: Delivered[Any], tx: Tx) -> None: ...

    assert app.handlers_for(PasswordChanged) == (h,) == app.handlers_for(UserLocked)
    assert app.handlers_for(ApiKeyRevoked) == ()
    with pytest.raises(TypeError, match="not a payload model"):
        app.handles(dict)  # type: ignore[arg-type]


# --- handling once, in order ---------------------------------------------------------------


def recording_app(store: ConsumerStore) -> tuple[ConsumerApp, list[str]]:
    """An app whose PasswordChanged handler writes a row and notes the call."""
    app = ConsumerApp("recorder", store=store)
    app.tables("CREATE TABLE IF NOT EXISTS effects (ce_id TEXT NOT NULL)")
    calls: list[str] = []

    @app.handles(PasswordChanged)
    def note(event: Delivered[PasswordChanged], tx: Tx) -> None:
        calls.append(event.ce_id)
        tx.execute("INSERT INTO effects VALUES (?)", (event.ce_id,))

    return app, calls


def effects(store: ConsumerStore) -> list[str]:
    with store.reading() as tx:
        return [str(r[0]) for r in tx.query_all("SELECT ce_id FROM effects ORDER BY ce_id")]


def changed(version: int, sequence: int) -> Delivered[PasswordChanged]:
    return delivery(
        PasswordChanged(), aggregate_id=USER, version=version, account_id=ACCOUNT, sequence=sequence
    )


def test_an_event_is_handled_once_and_a_redelivery_changes_nothing(
    consumer_store: ConsumerStore,
) -> None:
    # given an app and one event
    app, calls = recording_app(consumer_store)
    event = changed(2, 1)
    # when it is delivered twice
    first, second = app.handle(event), app.handle(event)
    # then the handler ran once, and the second was a duplicate
    assert (first.outcome, second.outcome) == (Outcome.HANDLED, Outcome.DUPLICATE)
    assert calls == [event.ce_id]
    assert effects(consumer_store) == [event.ce_id]
    assert app.handled_ids() == {event.ce_id}
    status = app.status()
    assert (status.count("handled"), status.count("duplicate")) == (1, 1)


def test_a_skipped_sequence_number_is_a_gap_recorded_and_the_event_is_handled(
    consumer_store: ConsumerStore, caplog: pytest.LogCaptureFixture
) -> None:
    # given events 1 and 4 of an account (2 and 3 never came)
    app, calls = recording_app(consumer_store)
    app.handle(changed(2, 1))
    # when 4 arrives
    result = app.handle(changed(5, 4))
    # then it is handled, and the gap is recorded, counted, logged
    assert result.outcome == Outcome.HANDLED
    assert result.gap is not None
    assert (result.gap.expected, result.gap.got) == (2, 4)
    status = app.status()
    assert status.count("gaps") == 1
    assert status.count("missing") == 2
    [gap] = status.gaps
    assert (gap.partition_key, gap.expected, gap.got, gap.ce_id) == (
        str(ACCOUNT),
        2,
        4,
        f"{USER}:5",
    )
    assert "gap in the sequence of" in caplog.text
    assert "expected 2, got 4" in caplog.text
    assert len(calls) == 2


def test_an_event_filling_a_recorded_gap_late_is_handled_but_an_older_one_is_stale(
    consumer_store: ConsumerStore,
) -> None:
    app, calls = recording_app(consumer_store)
    app.handle(changed(2, 1))
    app.handle(changed(4, 3))  # gap: 2 missing
    # when the missing 2 arrives late, it is handled
    late = app.handle(changed(3, 2))
    assert (late.outcome, late.late) == (Outcome.HANDLED, True)
    # but a new event with a sequence number already passed (not in a gap) is stale
    stale = app.handle(delivery(PasswordChanged(), account_id=ACCOUNT, sequence=1))
    assert stale.outcome == Outcome.STALE
    assert len(calls) == 3
    assert app.status().count("stale") == 1


def test_events_without_a_handler_are_recorded_and_tracked(consumer_store: ConsumerStore) -> None:
    app, _ = recording_app(consumer_store)
    login = delivery(
        LoginSucceeded(method="password", factor_id=None, totp_step=None),
        aggregate_id=USER,
        version=3,
        account_id=ACCOUNT,
        sequence=1,
    )
    assert app.handle(login).outcome == Outcome.NO_HANDLER
    assert app.handle(login).outcome == Outcome.DUPLICATE
    # the next event of the account shows no gap
    assert app.handle(changed(4, 2)).gap is None
    assert login.ce_id in app.handled_ids()


def test_a_failing_handler_leaves_nothing_behind(consumer_store: ConsumerStore) -> None:
    # given a handler that writes, then fails
    app, _ = recording_app(consumer_store)

    @app.handles(PasswordChanged)
    def fail(event: Delivered[PasswordChanged], tx: Tx) -> None:
        raise RuntimeError("the session store is down")

    event = changed(2, 1)
    with pytest.raises(RuntimeError, match="session store"):
        app.handle(event)
    # then neither its effect, nor the ce_id, nor the sequence were kept
    assert effects(consumer_store) == []
    assert app.handled_ids() == set()
    assert app.status().counters == {}


def test_consumers_sharing_a_store_keep_their_own_books(consumer_store: ConsumerStore) -> None:
    one, _ = recording_app(consumer_store)
    other = ConsumerApp("other", store=consumer_store)
    event = changed(2, 1)
    assert one.handle(event).outcome == Outcome.HANDLED
    assert other.handle(event).outcome == Outcome.NO_HANDLER


def test_a_store_is_a_sqlite_path_or_a_postgres_url(consumer_location: str) -> None:
    store = ConsumerStore.open(consumer_location)
    try:
        assert store.dialect == (
            "postgres" if consumer_location.startswith("postgres") else "sqlite"
        )
        store.ensure_tables()
        store.ensure_tables()  # again: nothing changes
    finally:
        store.close()
