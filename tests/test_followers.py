"""Followers and the runner, in-process, on SQLite and PostgreSQL.

The views here are small test views: one row per event applied (no unique key, so a
repeated position would show up as a second row rather than be hidden by an error).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from util import wait_for

from domain.account import Account
from domain.catalogue import event_type_name
from domain.context import RequestContext, Stamp
from domain.ledger import Ledger
from domain.values import AccountKind
from projections.errors import ProjectionFailedError
from projections.follower import Follower, view_follower
from projections.rebuild import rebuild, rebuild_together
from projections.registry import VIEWS
from projections.sql import Dialect, Tx
from projections.status import read_position
from projections.view import View
from secstate.bootstrap import build_ledger, open_view_db
from secstate.followers import follower_report
from secstate.runner import Runner
from secstate.settings import Settings
from store.notify import PostgresListener
from store.viewdb import ViewDB

DENIED = "Account.ControlPanelAccessDenied"


class PositionsView(View):
    """One row per applied event: (position, event type), in its one table."""

    name = "positions"
    tables = ("positions_seen",)

    def ddl(self, dialect: Dialect) -> list[str]:
        table = self.t(self.tables[0])
        return [
            f"CREATE TABLE {table} (position BIGINT NOT NULL, event_type TEXT NOT NULL)",
            f"CREATE INDEX {self.i(self.tables[0] + '_position')} ON {table} (position)",
        ]

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        table = self.t(self.tables[0])
        rows = [(position, event_type_name(event)) for position, event in events]
        if tx.dialect == "postgres":
            # Two arrays instead of a row per statement: ~10x faster with pure-Python psycopg.
            tx.execute(
                f"INSERT INTO {table}(position, event_type) "  # noqa: S608
                "SELECT * FROM unnest(?::bigint[], ?::text[])",
                ([r[0] for r in rows], [r[1] for r in rows]),
            )
        else:
            tx.executemany(f"INSERT INTO {table}(position, event_type) VALUES (?, ?)", rows)  # noqa: S608


class FragileView(PositionsView):
    """Like PositionsView, but its handler raises on denied control-panel accesses."""

    name = "fragile"
    tables = ("fragile_seen",)

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        for position, event in events:
            if event_type_name(event) == DENIED:
                raise ValueError("cannot handle denied accesses")
            tx.execute(
                f"INSERT INTO {self.t('fragile_seen')}(position, event_type) VALUES (?, ?)",  # noqa: S608
                (position, event_type_name(event)),
            )


# --- helpers -----------------------------------------------------------------------------


def write_events(
    ledger: Ledger,
    ctx: RequestContext,
    *,
    accounts: int = 3,
    per_account: int = 20,
    denied_at: int | None = None,
    prefix: str = "acct",
) -> None:
    """Open ``accounts`` accounts with ``per_account`` access checks each, saved together.

    With ``denied_at``, the first account's check number ``denied_at`` is refused (an
    allowlist entry goes in first, so the account has one more event).
    """
    stamp = Stamp(ctx, ledger.clock.now())
    batch = []
    for a in range(accounts):
        account = Account.open(f"{prefix}{a}", AccountKind.CUSTOMER, f"{prefix} {a}", stamp)
        if a == 0 and denied_at is not None:
            account.add_allowlist_entry("198.51.100.0/24", "office", stamp)
        for i in range(per_account):
            ip = "203.0.113.9" if (a == 0 and i == denied_at) else "198.51.100.10"
            account.check_control_panel_access(ip, stamp)
        batch.append(account)
    ledger.save(*batch)


def all_positions(ledger: Ledger) -> list[int]:
    head = int(ledger.recorder.max_notification_id() or 0)
    return [n.id for n in ledger.recorder.select_notifications(start=1, limit=head + 1)]


def seen(db: ViewDB, table: str = "positions_seen") -> list[int]:
    with db.reading() as tx:
        rows = tx.query_all(f"SELECT position FROM {table}")  # noqa: S608
    return sorted(int(r[0]) for r in rows)


@pytest.fixture
def view_db(settings: Settings) -> Iterator[ViewDB]:
    db = open_view_db(settings, "positions")
    yield db
    db.close()


@pytest.fixture
def test_views(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VIEWS, "positions", PositionsView)
    monkeypatch.setitem(VIEWS, "fragile", FragileView)


# --- exactly once ------------------------------------------------------------------------


def test_catching_up_again_and_after_a_restart_applies_nothing_twice(
    ledger: Ledger, ctx: RequestContext, settings: Settings, view_db: ViewDB
) -> None:
    # given a follower that caught up, with a small batch size (several transactions)
    write_events(ledger, ctx, accounts=4, per_account=30)
    follower = view_follower(ledger, PositionsView(), view_db, batch_size=7)
    follower.catch_up()
    # when it catches up again, and a fresh follower on a new connection does too
    assert follower.catch_up() == 0
    write_events(ledger, ctx, accounts=2, per_account=5, prefix="later")
    other_db = open_view_db(settings, "positions")
    try:
        restarted = view_follower(ledger, PositionsView(), other_db, batch_size=7)
        applied = restarted.catch_up()
    finally:
        other_db.close()
    # then every position is there exactly once
    assert applied == 2 * 6
    assert seen(view_db) == all_positions(ledger)
    assert follower.status().lag == 0


def test_two_followers_racing_on_one_view_apply_each_event_once(
    ledger: Ledger, ctx: RequestContext, settings: Settings, view_db: ViewDB
) -> None:
    # given many events and two followers of the same view on separate connections
    write_events(ledger, ctx, accounts=10, per_account=50)
    other_db = open_view_db(settings, "positions")
    followers = [
        view_follower(ledger, PositionsView(), view_db, batch_size=13),
        view_follower(ledger, PositionsView(), other_db, batch_size=13),
    ]
    errors: list[BaseException] = []

    def follow(f: Follower) -> None:
        try:
            f.catch_up()
        except BaseException as e:
            errors.append(e)

    # when both catch up at the same time (each re-delivers what the other applied)
    threads = [threading.Thread(target=follow, args=(f,)) for f in followers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other_db.close()
    # then no position was applied twice and none is missing
    assert errors == []
    assert seen(view_db) == all_positions(ledger)


def test_redelivered_batch_after_the_position_moved_writes_nothing(
    ledger: Ledger, ctx: RequestContext, view_db: ViewDB
) -> None:
    # given a follower that has applied everything
    write_events(ledger, ctx, accounts=2, per_account=5)
    follower = view_follower(ledger, PositionsView(), view_db)
    follower.catch_up()
    before = seen(view_db)
    # when the first batch is delivered again from position 0 (a stale reader)
    position = follower._advance(0, None, None, None)
    # then it is refused by the position check, and nothing is duplicated
    assert position == before[-1]
    assert seen(view_db) == before


# --- gaps in positions ----------------------------------------------------------------------


def leave_a_gap(ledger: Ledger, settings: Settings, width: int) -> None:
    """Make the next position ``width`` beyond the head, as writes that rolled back do
    (a PostgreSQL sequence never gives a value back; on SQLite a row written and deleted
    at the far end does the same)."""
    head = int(ledger.recorder.max_notification_id() or 0)
    table = ledger.recorder.events_table_name
    if settings.uses_postgres:
        import psycopg
        from conftest import POSTGRES_URL

        schema = settings.postgres_params()["POSTGRES_SCHEMA"]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'notification_id')) "
                "FROM generate_series(1, %s)",
                (f"{schema}.{table}", width),
            )
        return
    import sqlite3

    conn = sqlite3.connect(settings.home / "ledger.sqlite3")
    try:
        with conn:
            conn.execute(
                f"INSERT INTO {table} (rowid, originator_id, originator_version, topic, state) "  # noqa: S608 - the library's table
                "VALUES (?, ?, 1, 'gap', x'')",
                (head + width, "00000000000000000000000000000000"),
            )
    finally:
        conn.close()


def close_sqlite_gap(ledger: Ledger, settings: Settings) -> None:
    """Drop the placeholder row of ``leave_a_gap`` (SQLite only): the gap stays."""
    if settings.uses_postgres:
        return
    import sqlite3

    conn = sqlite3.connect(settings.home / "ledger.sqlite3")
    try:
        with conn:
            conn.execute(f"DELETE FROM {ledger.recorder.events_table_name} WHERE topic = 'gap'")  # noqa: S608 - the library's table
    finally:
        conn.close()


def test_followers_runner_and_rebuild_cross_a_gap_wider_than_a_batch(
    ledger: Ledger, ctx: RequestContext, settings: Settings, test_views: None
) -> None:
    # given a log with a gap of 50 positions between two runs of events
    write_events(ledger, ctx, accounts=2, per_account=5)
    before_gap = int(ledger.recorder.max_notification_id() or 0)
    leave_a_gap(ledger, settings, 50)
    write_events(ledger, ctx, accounts=2, per_account=5, prefix="after")
    close_sqlite_gap(ledger, settings)
    positions = all_positions(ledger)
    after_gap = [p for p in positions if p > before_gap]
    assert after_gap[0] >= before_gap + 50  # the gap is there
    # when the runner follows with batches much smaller than the gap
    with Runner(settings, ledger, ["positions", "state", "timeline"], batch_size=7) as runner:
        report = runner.run(once=True)
    # then every follower reached the head, with each event once
    assert report.failed == []
    assert {run.name: run.position for run in report.followers} == dict.fromkeys(
        ["positions", "state", "timeline"], positions[-1]
    )
    db = open_view_db(settings, "positions")
    try:
        assert seen(db) == positions
        # and a rebuild crosses the gap too, and nothing reports a lag
        rebuilt = rebuild(view_follower(ledger, PositionsView(), db, batch_size=7))
        assert rebuilt == positions[-1]
        assert seen(db) == positions
    finally:
        db.close()
    for name in ("positions", "state", "timeline"):
        report_of = follower_report(settings, ledger, name)
        assert (report_of.state, report_of.lag) == ("caught up", 0)


# --- failure isolation -------------------------------------------------------------------


def test_failing_view_stops_at_the_event_and_the_other_view_catches_up(
    ledger: Ledger, ctx: RequestContext, settings: Settings, test_views: None
) -> None:
    # given events with one denied access in the middle
    write_events(ledger, ctx, accounts=3, per_account=20, denied_at=7)
    write_events(ledger, ctx, accounts=2, per_account=10, prefix="later")
    head = all_positions(ledger)[-1]
    denied = [
        n.id
        for n in ledger.recorder.select_notifications(start=1, limit=head)
        if n.topic == "secstate." + DENIED
    ]
    assert len(denied) == 1
    # when both views run to the head
    with Runner(settings, ledger, ["positions", "fragile"], batch_size=50) as runner:
        report = runner.run(once=True)
    # then the fragile view stopped just before the bad event, naming it
    by_name = {v.name: v for v in report.followers}
    fragile = by_name["fragile"]
    assert fragile.failed_position == denied[0]
    assert fragile.failed_event_type == DENIED
    assert fragile.error is not None
    assert f"position {denied[0]}" in fragile.error
    assert DENIED in fragile.error
    assert fragile.position == denied[0] - 1
    # and everything before it was applied (the failing batch was split, not lost)
    db = open_view_db(settings, "fragile")
    try:
        assert seen(db, "fragile_seen") == [p for p in all_positions(ledger) if p < denied[0]]
    finally:
        db.close()
    # and the other view caught up fully
    assert by_name["positions"].error is None
    assert by_name["positions"].position == head
    # and the status shows the stored error
    status = follower_report(settings, ledger, "fragile")
    assert status.state == "failed"
    assert status.last_error is not None
    assert status.last_error.position == denied[0]
    assert status.last_error.event_type == DENIED
    assert follower_report(settings, ledger, "positions").state == "caught up"


def test_follower_raises_projection_failed_error_naming_position_and_type(
    ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given a denied access at a known position
    write_events(ledger, ctx, accounts=1, per_account=5, denied_at=2)
    db = open_view_db(settings, "fragile")
    try:
        follower = view_follower(ledger, FragileView(), db)
        # when it catches up, then it raises naming position and type
        with pytest.raises(ProjectionFailedError) as caught:
            follower.catch_up()
        assert caught.value.event_type == DENIED
        assert caught.value.position == follower.position() + 1
        error = follower.last_error()
        assert error is not None
        assert error.position == caught.value.position
        assert "ValueError: cannot handle denied accesses" in error.message
    finally:
        db.close()


# --- continuous running ------------------------------------------------------------------


def test_runner_follows_new_events_until_stopped_and_keeps_its_position(
    ledger: Ledger, ctx: RequestContext, settings: Settings, test_views: None
) -> None:
    # given a runner following continuously; PostgreSQL followers are woken by NOTIFY,
    # so a poll interval far longer than the wait below shows the wake-up works there
    poll = 60.0 if settings.uses_postgres else 0.05
    write_events(ledger, ctx, accounts=2, per_account=5)
    runner = Runner(settings, ledger, ["positions"], poll_interval=poll)
    runner.open()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run()))
    thread.start()
    try:
        db = open_view_db(settings, "positions")
        try:
            assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
            # when more events are written while it idles
            write_events(ledger, ctx, accounts=3, per_account=4, prefix="more")
            # then it applies them without being restarted
            assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
        finally:
            db.close()
    finally:
        runner.stop()
        thread.join()
        runner.close()
    # and stopping is clean: no error, position at the head
    report = outcome[0]
    assert report.interrupted
    assert report.failed == []
    assert report.followers[0].position == all_positions(ledger)[-1]


# --- rebuild -----------------------------------------------------------------------------


def test_rebuild_keeps_the_old_rows_visible_until_the_swap_then_matches_incremental(
    ledger: Ledger, ctx: RequestContext, settings: Settings, view_db: ViewDB
) -> None:
    # given a view built incrementally, then damaged so old and new content differ
    write_events(ledger, ctx, accounts=5, per_account=40)
    follower = view_follower(ledger, PositionsView(), view_db, batch_size=10)
    follower.catch_up()
    incremental = seen(view_db)
    with view_db.transaction() as tx:
        tx.execute("DELETE FROM positions_seen WHERE position > ?", (incremental[10],))
    damaged = seen(view_db)
    reader = open_view_db(settings, "positions")
    seen_during: list[list[int]] = []
    try:
        # when it is rebuilt, a reader looking on each batch
        position = rebuild(follower, lambda done, total: seen_during.append(seen(reader)))
        after = seen(reader)
    finally:
        reader.close()
    # then readers saw the old (damaged) rows throughout, and the full rows after the swap
    assert len(seen_during) > 2
    assert all(rows == damaged for rows in seen_during)
    assert position == incremental[-1]
    assert after == incremental
    # and following goes on from the swapped-in position without repeats
    write_events(ledger, ctx, accounts=1, per_account=3, prefix="after")
    follower.catch_up()
    assert seen(view_db) == all_positions(ledger)


def test_rebuild_while_the_runner_follows_ends_with_each_event_once(
    ledger: Ledger, ctx: RequestContext, settings: Settings, test_views: None
) -> None:
    # given a runner following the view while events keep arriving
    write_events(ledger, ctx, accounts=5, per_account=40)
    runner = Runner(settings, ledger, ["positions"], batch_size=20, poll_interval=0.02)
    runner.open()
    thread = threading.Thread(target=runner.run)
    thread.start()
    db = open_view_db(settings, "positions")
    try:
        # when the view is rebuilt meanwhile, with more writes during the rebuild
        writes = iter(range(3))

        def write_more(done: int, total: int) -> None:
            if next(writes, None) is not None:
                write_events(ledger, ctx, accounts=1, per_account=10, prefix=f"w{done}x")

        rebuild(view_follower(ledger, PositionsView(), db, batch_size=20), write_more)
        # then once the runner caught up, every event is there exactly once
        assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
    finally:
        runner.stop()
        thread.join()
        runner.close()
        db.close()


@pytest.mark.postgres
def test_postgres_runner_reconnects_its_listener_and_still_follows(
    pg_schema: str, tmp_path: Path, ctx: RequestContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a runner woken by NOTIFY only (its poll interval is far beyond the wait below)
    import psycopg
    from conftest import POSTGRES_URL, make_settings

    monkeypatch.setitem(VIEWS, "positions", PositionsView)
    settings = make_settings("postgres", tmp_path / "home", pg_schema)
    ledger = build_ledger(settings)
    runner = Runner(settings, ledger, ["positions"], poll_interval=60.0)
    runner.open()
    assert isinstance(runner.waker, PostgresListener)
    thread = threading.Thread(target=runner.run)
    thread.start()
    db = open_view_db(settings, "positions")
    try:
        write_events(ledger, ctx, accounts=1, per_account=3)
        assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
        # when the server drops the listening connection
        listener = runner.waker
        old_pid = listener._conn.info.backend_pid
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            row = admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone()
        assert row == (True,)
        # and the listener has reconnected (a new connection, listening again)
        assert wait_for(
            lambda: listener._conn is not None and listener._conn.info.backend_pid != old_pid,
            timeout=20,
        )
        # then events written afterwards still reach the view without waiting for a poll
        write_events(ledger, ctx, accounts=2, per_account=3, prefix="after")
        assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
    finally:
        runner.stop()
        thread.join()
        runner.close()
        db.close()
        ledger.close()


@pytest.mark.postgres
def test_postgres_runner_survives_losing_its_view_connection(
    pg_schema: str, tmp_path: Path, ctx: RequestContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a runner following a view
    import psycopg
    from conftest import POSTGRES_URL, make_settings

    monkeypatch.setitem(VIEWS, "positions", PositionsView)
    settings = make_settings("postgres", tmp_path / "home", pg_schema)
    ledger = build_ledger(settings)
    runner = Runner(settings, ledger, ["positions"], poll_interval=0.05)
    runner.open()
    thread = threading.Thread(target=runner.run)
    thread.start()
    db = open_view_db(settings, "positions")
    try:
        write_events(ledger, ctx, accounts=1, per_account=3)
        assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=20)
        # when the server drops the view's connection
        run = runner.followers[0]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            pid = run.follower.sink.db._pg.info.backend_pid
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        write_events(ledger, ctx, accounts=2, per_account=3, prefix="after")
        # then it reconnects and catches up, each event once, and the error is cleared
        assert wait_for(lambda: seen(db) == all_positions(ledger), timeout=30)
        assert run.follower.sink.db._pg.info.backend_pid != pid
        assert wait_for(lambda: follower_report(settings, ledger, "positions").last_error is None)
    finally:
        runner.stop()
        thread.join()
        runner.close()
        db.close()
        ledger.close()


def test_views_rebuilt_from_one_shared_scan_match_their_incremental_builds(
    ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given the real state and timeline views, each followed incrementally, then damaged
    from projections.state import StateView
    from projections.timeline import TimelineView

    write_events(ledger, ctx, accounts=4, per_account=30)
    dbs = {name: open_view_db(settings, name) for name in ("state", "timeline")}
    try:
        followers = [
            view_follower(ledger, StateView(), dbs["state"], batch_size=17),
            view_follower(ledger, TimelineView(), dbs["timeline"], batch_size=17),
        ]
        for follower in followers:
            follower.catch_up()
        incremental = {name: dump(db, VIEW_TABLES[name]) for name, db in dbs.items()}
        with dbs["timeline"].transaction() as tx:
            tx.execute("DELETE FROM timeline WHERE position > 5")
        # when both are rebuilt from one scan of the log
        position = rebuild_together(followers)
        # then each equals its incremental build, at the head
        assert position == all_positions(ledger)[-1]
        for name, db in dbs.items():
            assert dump(db, VIEW_TABLES[name]) == incremental[name]
            assert read_position(db, name) == position
    finally:
        for db in dbs.values():
            db.close()


VIEW_TABLES = {"state": ("state_accounts", "state_users"), "timeline": ("timeline",)}


def dump(db: ViewDB, tables: Sequence[str]) -> dict[str, list[str]]:
    with db.reading() as tx:
        return {
            t: sorted(repr(tuple(r)) for r in tx.query_all(f"SELECT * FROM {t}"))  # noqa: S608
            for t in tables
        }


def test_rebuild_leaves_the_connection_settings_it_changed_as_they_were(
    ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given a timeline view's connection with its own settings
    from projections.timeline import TimelineView

    write_events(ledger, ctx, accounts=2, per_account=10)
    db = open_view_db(settings, "timeline")
    pragmas = ("wal_autocheckpoint", "journal_size_limit", "threads")
    try:
        if db.dialect == "sqlite":
            db.execute_outside_transaction("PRAGMA wal_autocheckpoint = 500")
        before = (
            [db.execute_outside_transaction(f"PRAGMA {p}")[0] for p in pragmas]
            if db.dialect == "sqlite"
            else []
        )
        # when it is rebuilt (indexes and all)
        position = rebuild_together([view_follower(ledger, TimelineView(), db)])
        # then it is at the head, and the connection's settings are back as they were
        assert position == all_positions(ledger)[-1]
        if db.dialect == "sqlite":
            assert [db.execute_outside_transaction(f"PRAGMA {p}")[0] for p in pragmas] == before
    finally:
        db.close()
