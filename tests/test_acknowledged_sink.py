"""The follower core's second kind of sink: deliver, wait for the acknowledgement, then
advance the position (at least once), on SQLite and PostgreSQL.

The "broker" here is a list in memory: what is under test is the follower's promise
(nothing lost, order kept, duplicates only of a batch whose acknowledgement or saved
position was lost), not a broker. The Kafka relay's tests run against a real broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from domain.account import Account
from domain.context import RequestContext, Stamp
from domain.ledger import Ledger
from domain.ports import RawRow
from domain.values import AccountKind
from projections.follower import Follower
from projections.sinks import Items, TrackedSink, Wants
from projections.source import LogSource
from projections.status import ViewError
from secstate import followers
from secstate.bootstrap import open_view_db
from secstate.followers import OpenedFollower, follower_report
from secstate.runner import Runner
from secstate.settings import Settings
from store.viewdb import ViewDB


class BrokerDown(Exception):
    """The other side did not acknowledge."""


class ListSink(TrackedSink):
    """Publishes to a list; fails the delivery numbered ``fail_on`` half-way through."""

    def __init__(self, db: ViewDB, wants: Wants = "events", fail_on: int | None = None) -> None:
        super().__init__("relay-test", db)
        self.wants = wants
        self.published: list[tuple[int, object]] = []
        self.deliveries = 0
        self.fail_on = fail_on

    def deliver(self, items: Items) -> None:
        self.deliveries += 1
        if self.deliveries == self.fail_on:
            self.published.extend(items[: len(items) // 2])  # some went out, unacknowledged
            raise BrokerDown("no acknowledgement from the broker")
        self.published.extend(items)


def write_accounts(ledger: Ledger, ctx: RequestContext, count: int, prefix: str = "a") -> None:
    stamp = Stamp(ctx, ledger.clock.now())
    ledger.save(
        *[
            Account.open(f"{prefix}{i}", AccountKind.CUSTOMER, f"{prefix} {i}", stamp)
            for i in range(count)
        ]
    )


def positions(ledger: Ledger) -> list[int]:
    return [row.position for rows in ledger.log_store.scan() for row in rows]


@pytest.fixture
def db(settings: Settings) -> Iterator[ViewDB]:
    opened = open_view_db(settings, "relay-test")
    yield opened
    opened.close()


def test_a_failed_delivery_keeps_the_position_and_the_next_run_delivers_it_again(
    ledger: Ledger, ctx: RequestContext, db: ViewDB
) -> None:
    # given 30 events and a sink whose second delivery is not acknowledged
    write_accounts(ledger, ctx, 30)
    sink = ListSink(db, fail_on=2)
    follower = Follower(LogSource.of(ledger), sink, batch_size=10)
    # when the follower catches up
    with pytest.raises(BrokerDown):
        follower.catch_up()
    # then the position is that of the last acknowledged batch
    expected = positions(ledger)
    assert follower.position() == expected[9]
    # when it runs again (the broker is back)
    follower.catch_up()
    # then every event was published, in order, duplicates only from the failed batch
    published = [p for p, _ in sink.published]
    assert sorted(set(published)) == expected
    assert [p for i, p in enumerate(published) if p in published[:i]] == expected[10:15]
    assert follower.position() == expected[-1]
    assert follower.status().lag == 0


class LosesOneSave(ListSink):
    """Acknowledged, then the process "dies" before the position is saved, once."""

    def __init__(self, db: ViewDB) -> None:
        super().__init__(db)
        self.lost = False

    def save_position(self, position: int) -> None:
        if not self.lost:
            self.lost = True
            raise BrokerDown("crashed after the acknowledgement")
        super().save_position(position)


def test_a_position_lost_after_the_acknowledgement_redelivers_that_batch_only(
    ledger: Ledger, ctx: RequestContext, db: ViewDB
) -> None:
    # given 25 events and a sink that loses its first saved position
    write_accounts(ledger, ctx, 25)
    sink = LosesOneSave(db)
    follower = Follower(LogSource.of(ledger), sink, batch_size=10)
    # when it catches up, fails, and catches up again
    with pytest.raises(BrokerDown):
        follower.catch_up()
    follower.catch_up()
    # then the first batch went out twice, the rest once, and nothing is missing
    expected = positions(ledger)
    published = [p for p, _ in sink.published]
    assert published == expected[:10] + expected
    assert follower.position() == expected[-1]


def test_a_sink_that_wants_rows_gets_the_stored_bytes_undecoded(
    ledger: Ledger, ctx: RequestContext, db: ViewDB
) -> None:
    # given events, and a sink that wants the stored rows (as an integrity log does)
    write_accounts(ledger, ctx, 5)
    sink = ListSink(db, wants="rows")
    # when it catches up
    Follower(LogSource.of(ledger), sink, batch_size=2).catch_up()
    # then it got each row with its topic and state bytes, in position order
    rows = [item for _, item in sink.published]
    assert all(isinstance(row, RawRow) for row in rows)
    assert [row.position for row in rows if isinstance(row, RawRow)] == positions(ledger)
    assert all(
        isinstance(row, RawRow) and row.topic.startswith("secstate.") and bytes(row.state)
        for row in rows
    )


@dataclass(frozen=True)
class ListFollowerKind:
    """The test sink, registered as a follower the runner and ``project status`` know."""

    name: str = "relay-test"

    def open(self, settings: Settings, reader: object, batch_size: int) -> OpenedFollower:
        db = open_view_db(settings, self.name)
        return OpenedFollower(Follower(LogSource.of(reader), ListSink(db), batch_size), db.close)

    def stored(self, settings: Settings) -> tuple[int | None, ViewError | None]:
        return followers.ViewFollowerKind(self.name).stored(settings)


def test_the_runner_supervises_a_registered_acknowledged_follower_by_name(
    ledger: Ledger,
    ctx: RequestContext,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a follower of another kind than a view, registered by name
    monkeypatch.setattr(followers, "_OTHERS", {})
    followers.register(ListFollowerKind())
    write_accounts(ledger, ctx, 12)
    assert "relay-test" in followers.follower_names()
    assert follower_report(settings, ledger, "relay-test").state == "not started"
    # when the runner runs every registered follower once
    with Runner(settings, ledger, batch_size=5) as runner:
        report = runner.run(once=True)
    # then it ran beside the views and reached the head, and its status says so
    names = {run.name: run.position for run in report.followers}
    head = positions(ledger)[-1]
    assert names["relay-test"] == head
    assert {"state", "timeline"} <= set(names)
    status = follower_report(settings, ledger, "relay-test")
    assert (status.state, status.position, status.lag) == ("caught up", head, 0)
    # and a second registration under the same name is refused
    with pytest.raises(ValueError, match="registered already"):
        followers.register(ListFollowerKind())
