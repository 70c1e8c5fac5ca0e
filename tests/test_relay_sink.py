"""The relay's sink on its own, on SQLite and PostgreSQL: which account each event
belongs to, its per-account sequence, and what happens to both when the broker does not
acknowledge or the process dies before saving.

The publisher here keeps messages in a list: under test is the relay's numbering and
position, not a broker (tests/test_relay_kafka.py runs it against a real one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest

from domain import commands as c
from domain.context import RequestContext
from domain.errors import LoginRefusedError
from domain.ledger import Ledger
from producers.messages import MessageBuilder, OutgoingMessage
from producers.publisher import PublishError
from producers.relay import RelaySink
from projections.errors import ProjectionFailedError
from projections.follower import Follower
from projections.source import LogSource
from secstate.bootstrap import open_view_db
from secstate.settings import Settings
from store.viewdb import ViewDB


class ListPublisher:
    """Acknowledges by appending; refuses the batches numbered in ``refuse``."""

    topic = "test"

    def __init__(self, sent: list[OutgoingMessage], refuse: Sequence[int] = ()) -> None:
        self.sent = sent
        self.refuse = set(refuse)
        self.batches = 0
        self.closed = False

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.batches += 1
        if self.batches in self.refuse:
            self.sent.extend(messages[: len(messages) // 2])  # some reached the broker
            raise PublishError("the broker did not acknowledge")
        self.sent.extend(messages)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def db(settings: Settings) -> Iterator[ViewDB]:
    opened = open_view_db(settings, "relay")
    yield opened
    opened.close()


def headers(message: OutgoingMessage) -> dict[str, str]:
    return {k: v.decode() for k, v in message.headers}


def make_history(ledger: Ledger, ctx: RequestContext) -> None:
    """Two accounts, users in each, account and user events interleaved, one refusal."""
    for name in ("acme", "globex"):
        ledger.open_account(c.parse_command(c.OpenAccount, name=name), ctx)
    for account, user in (("acme", "alice"), ("globex", "bob"), ("acme", "carol")):
        ledger.register_user(
            c.parse_command(
                c.RegisterUser,
                account=account,
                username=user,
                email=f"{user}@mail.example",
                password="correct horse battery",
            ),
            ctx,
        )
    ledger.add_allowlist_entry(
        c.parse_command(c.AddAllowlistEntry, account="acme", cidr="203.0.113.0/24", label="office"),
        ctx,
    )
    for username in ("alice", "nobody"):  # a wrong password, then an unknown user
        with pytest.raises(LoginRefusedError):
            ledger.login(c.parse_command(c.Login, username=username, password="wrong one!"), ctx)


def follower(
    ledger: Ledger, db: ViewDB, publisher: ListPublisher, batch: int = 4, name: str = "relay"
) -> Follower:
    sink = RelaySink(name, db, MessageBuilder("/secstate/test"), lambda: publisher)
    return Follower(LogSource.of(ledger), sink, batch)


def test_each_account_numbers_its_events_from_one_whichever_aggregate_recorded_them(
    ledger: Ledger, ctx: RequestContext, db: ViewDB
) -> None:
    # given accounts, their users' events and a refused attempt on an unknown user
    make_history(ledger, ctx)
    sent: list[OutgoingMessage] = []
    # when the relay publishes the log
    follower(ledger, db, ListPublisher(sent)).catch_up()
    # then every event went out once, in log order
    positions = [int(headers(m)["ce_logposition"]) for m in sent]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(sent) > 0
    # and per partition key the sequence is 1, 2, 3, ... in log order
    by_key: dict[str, list[int]] = {}
    for m in sent:
        h = headers(m)
        assert m.key.decode() == h["ce_partitionkey"]
        by_key.setdefault(h["ce_partitionkey"], []).append(int(h["ce_accountseq"]))
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_key.values())
    # and a user's events are keyed by the account the user registered in
    acme = next(
        json.loads(m.value)["aggregate_id"]
        for m in sent
        if json.loads(m.value)["type"] == "Account.Opened"
        and json.loads(m.value)["data"]["name"] == "acme"
    )
    alice_events = [
        m
        for m in sent
        if json.loads(m.value)["type"].startswith("User.") and m.key.decode() == acme
    ]
    assert {json.loads(m.value)["type"] for m in alice_events} >= {
        "User.Registered",
        "User.LoginFailed",
    }
    assert all(json.loads(m.value)["account_id"] == acme for m in alice_events)
    # and the refusal against an unknown user belongs to no account: sequence 1 of its own
    refusal = [m for m in sent if json.loads(m.value)["type"].startswith("CredentialAttempt.")]
    assert len(refusal) == 1
    assert json.loads(refusal[0].value)["account_id"] is None
    assert headers(refusal[0])["ce_accountseq"] == "1"


def test_an_unacknowledged_batch_keeps_position_and_numbering_and_is_sent_again_the_same(
    ledger: Ledger, ctx: RequestContext, db: ViewDB
) -> None:
    # given a history and a broker that refuses the second batch
    make_history(ledger, ctx)
    first_try: list[OutgoingMessage] = []
    broken = ListPublisher(first_try, refuse=[2])
    relay = follower(ledger, db, broken)
    # when the relay catches up, it stops at the refusal
    with pytest.raises(PublishError):
        relay.catch_up()
    # then its position is the end of the first batch, and the failed client was closed
    assert relay.position() == int(headers(first_try[3])["ce_logposition"])
    assert broken.closed
    # when it runs again on a new client
    retried: list[OutgoingMessage] = []
    follower(ledger, db, ListPublisher(retried)).catch_up()
    # then each event carries the same id and sequence as on a clean run from scratch
    clean: list[OutgoingMessage] = []
    follower(ledger, db, ListPublisher(clean), batch=100, name="relay_clean").catch_up()
    published = {m.ce_id: headers(m)["ce_accountseq"] for m in first_try[:4] + retried}
    assert published == {m.ce_id: headers(m)["ce_accountseq"] for m in clean}
    # and what went out twice went out with the same numbers (consumers drop it by ce_id)
    dupes = first_try[4:]
    assert dupes
    assert all(published[m.ce_id] == headers(m)["ce_accountseq"] for m in dupes)


def test_a_deleted_registration_stops_the_relay_at_the_first_event_it_cannot_place(
    ledger: Ledger, ctx: RequestContext, settings: Settings, db: ViewDB
) -> None:
    from test_tampered_store import Store

    # given a history whose first user's registration row was deleted behind our back
    make_history(ledger, ctx)
    alice = ledger.get_user("alice").id
    backend = "postgres" if settings.uses_postgres else "sqlite"
    schema = settings.postgres_params()["POSTGRES_SCHEMA"] if settings.uses_postgres else None
    store = Store(backend, settings.home, schema, {})
    store.sql(
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 1",
        (store.key(alice),),
    )
    sent: list[OutgoingMessage] = []
    relay = follower(ledger, db, ListPublisher(sent), batch=100)
    # when the relay publishes the log
    with pytest.raises(ProjectionFailedError) as failure:
        relay.catch_up()
    # then it names the event it stopped at, and published nothing of that batch
    assert failure.value.event_type.startswith("User.")
    assert "registration is not in the log" in str(failure.value)
    assert sent == []
    assert relay.position() == 0
    # and it says so in the relay's status
    error = relay.last_error()
    assert error is not None
    assert error.position == failure.value.position
