"""``secstate project run|status|rebuild`` in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from test_fastlog import DEMO, VIEW_TABLES, dump
from test_followers import DENIED, FragileView, PositionsView, all_positions, seen, write_events

from domain.context import RequestContext
from domain.ledger import Ledger
from projections.registry import VIEWS
from secstate.bootstrap import build_ledger, open_view_db, store_config
from secstate.cli import run
from secstate.demo import run_demo
from secstate.settings import Settings
from store.locks import exclusive


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = run(list(args))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """The CLI on the test's store, with the test views registered beside the real ones."""
    monkeypatch.delenv("SECSTATE_DATABASE_URL", raising=False)
    monkeypatch.setenv("SECSTATE_HOME", str(settings.home))
    if settings.database_url is not None:
        monkeypatch.setenv("SECSTATE_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setitem(VIEWS, "positions", PositionsView)
    monkeypatch.setitem(VIEWS, "fragile", FragileView)
    return Cli(capsys)


@pytest.mark.parametrize(
    "args",
    [
        ("project", "run", "nope", "--once"),
        ("project", "run", "positions", "nope"),
        ("project", "status", "nope"),
        ("project", "rebuild", "nope"),
    ],
)
def test_unknown_projection_name_is_refused_listing_the_known_ones(
    cli: Cli, args: tuple[str, ...]
) -> None:
    # when a command names a view that does not exist
    result = cli(*args)
    # then it exits 1 with one line naming it and the known views
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: unknown projection 'nope'")
    # (followers for run and status, the relay among them; views only for a rebuild)
    known = (
        "fragile, positions, state, timeline"
        if args[1] == "rebuild"
        else ("fragile, positions, relay, state, timeline")
    )
    assert f"known: {known}" in lines[0]


def test_run_once_stops_the_failing_view_only_and_status_json_shows_its_error(
    cli: Cli, ledger: Ledger, ctx: RequestContext
) -> None:
    # given events with one denied access in the middle
    write_events(ledger, ctx, accounts=3, per_account=15, denied_at=4)
    head = all_positions(ledger)[-1]
    denied = next(
        n.id
        for n in ledger.recorder.select_notifications(start=1, limit=head)
        if n.topic == "secstate." + DENIED
    )
    # when both test views are caught up once
    result = cli("project", "run", "positions", "fragile", "--once", "--batch-size", "10")
    # then the command fails, naming the view, the position and the event type
    assert result.code == 1
    assert f"error: projection 'fragile' stopped at position {denied} ({DENIED})" in result.err
    assert f"positions: position {head}" in result.out
    # and the status, as JSON, shows where each view stands and the stored error
    status = cli("project", "status", "--json")
    assert status.code == 0, status.err
    views = {v["view"]: v for v in status.json()["views"]}
    assert status.json()["head"] == head
    assert views["positions"] == {
        "view": "positions",
        "state": "caught up",
        "position": head,
        "head": head,
        "lag": 0,
        "last_error": None,
    }
    fragile = views["fragile"]
    assert fragile["state"] == "failed"
    assert fragile["position"] == denied - 1
    assert fragile["lag"] == head - denied + 1
    assert fragile["last_error"]["position"] == denied
    assert fragile["last_error"]["event_type"] == DENIED
    assert "ValueError: cannot handle denied accesses" in fragile["last_error"]["message"]
    assert fragile["last_error"]["failed_at"].endswith("+00:00")
    assert views["timeline"]["state"] == "not started"
    # and the table for people says the same
    table = cli("project", "status", "fragile")
    assert table.code == 0
    assert "failed" in table.out
    unwrapped = re.sub(r"[\s│┃]", "", table.out)  # the error column may wrap
    assert f"stoppedatposition{denied}" in unwrapped


def test_run_once_catches_up_the_real_views(cli: Cli, ledger: Ledger, ctx: RequestContext) -> None:
    # given some events
    write_events(ledger, ctx, accounts=2, per_account=10)
    head = all_positions(ledger)[-1]
    # when the real views are run once
    result = cli("project", "run", "state", "timeline", "--once")
    # then both reach the head and the status says so
    assert result.code == 0, result.err
    status = cli("project", "status", "state", "timeline", "--json").json()
    assert [(v["view"], v["state"], v["position"]) for v in status["views"]] == [
        ("state", "caught up", head),
        ("timeline", "caught up", head),
    ]


def test_rebuild_swaps_in_a_full_copy_and_reports_json_with_progress_on_stderr(
    cli: Cli, ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given a view built incrementally and then damaged
    write_events(ledger, ctx, accounts=4, per_account=25)
    assert cli("project", "run", "positions", "--once").code == 0
    db = open_view_db(settings, "positions")
    try:
        with db.transaction() as tx:
            tx.execute("DELETE FROM positions_seen WHERE position > 10")
        # when it is rebuilt
        result = cli("project", "rebuild", "positions", "--json", "--batch-size", "10")
        # then the JSON names the swapped-in position, the progress went to stderr
        assert result.code == 0, result.err
        head = all_positions(ledger)[-1]
        assert result.json()["view"] == "positions"
        assert result.json()["position"] == head
        assert "rebuild positions" in result.err
        assert "ev/s" in result.err
        # and the live view is complete again, each event once
        assert seen(db) == all_positions(ledger)
    finally:
        db.close()


def test_second_rebuild_of_a_view_is_refused_while_one_runs(
    cli: Cli, ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given a rebuild of the positions view in progress (its lock held elsewhere)
    write_events(ledger, ctx, accounts=2, per_account=5)
    with exclusive(store_config(settings), ["rebuild-positions"]):
        # when another rebuild of it starts
        refused = cli("project", "rebuild", "positions", "fragile")
        # then it is refused at once with one clear line, and builds nothing
        assert refused.code == 1
        assert refused.err.strip().splitlines() == [
            "error: another process is already running 'rebuild-positions' on this "
            + ("database schema" if settings.uses_postgres else "store")
            + "; wait for it to finish"
        ]
        # and another view can still be rebuilt meanwhile
        assert cli("project", "rebuild", "fragile").code == 0
    # and once the first is done, a rebuild goes through
    assert cli("project", "rebuild", "positions").code == 0


def test_failed_rebuild_exits_1_and_leaves_the_live_view_untouched(
    cli: Cli, ledger: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given a fragile view caught up to just before a denied access
    write_events(ledger, ctx, accounts=2, per_account=10, denied_at=6)
    cli("project", "run", "fragile", "--once")
    db = open_view_db(settings, "fragile")
    try:
        before = seen(db, "fragile_seen")
        # when it is rebuilt
        result = cli("project", "rebuild", "fragile")
        # then the rebuild fails naming the event, and readers still see the old rows
        assert result.code == 1
        assert "stopped at position" in result.err
        assert "the live view is unchanged" in result.err
        assert seen(db, "fragile_seen") == before
    finally:
        db.close()


def _demo_views(settings: Settings) -> dict[str, dict[str, list[str]]]:
    """Every row of the real views' tables, sorted."""
    dumps = {}
    for name, tables in VIEW_TABLES.items():
        db = open_view_db(settings, name)
        try:
            dumps[name] = dump(db, tables)
        finally:
            db.close()
    return dumps


def test_parallel_rebuild_of_the_real_views_yields_the_rows_of_one_shared_scan(
    cli: Cli, settings: Settings
) -> None:
    # given a demo history, its views rebuilt from one shared scan (--jobs 1)
    run_demo(settings, DEMO)
    shared = cli("project", "rebuild", "state", "timeline", "--jobs", "1", "--json")
    assert shared.code == 0, shared.err
    expected = _demo_views(settings)
    # when they are rebuilt again, each view in its own process
    parallel = cli("project", "rebuild", "state", "timeline", "--jobs", "2", "--json")
    # then both reach the same position, with one progress bar each and per-view figures
    assert parallel.code == 0, parallel.err
    figures = parallel.json()
    assert figures["position"] == shared.json()["position"] > 0
    assert figures["views"] == ["state", "timeline"]
    assert figures["jobs"] == 2
    assert set(figures["per_view"]) == {"state", "timeline"}
    assert "rebuild state " in parallel.err
    assert "rebuild timeline " in parallel.err
    # and every row of every table is the same
    assert _demo_views(settings) == expected
    status = cli("project", "status", "state", "timeline", "--json").json()
    assert [v["position"] for v in status["views"]] == [figures["position"]] * 2


def test_failed_parallel_rebuild_exits_3_and_leaves_every_live_view_untouched(
    cli: Cli, settings: Settings
) -> None:
    # given the real views caught up with a demo history, then an event of a foreign
    # topic stored in the log (every rebuild process refuses it)
    run_demo(settings, DEMO)
    assert cli("project", "run", "state", "timeline", "--once").code == 0
    before = _demo_views(settings)
    ledger = build_ledger(settings)
    try:
        ledger.recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "builtins:dict", b"{}")])
        head = int(ledger.recorder.max_notification_id() or 0)
    finally:
        ledger.close()
    # when both are rebuilt in parallel processes
    result = cli("project", "rebuild", "state", "timeline", "--jobs", "2")
    # then the rebuild fails with one line naming the view, the position and the type
    # (exit 3: the store holds a row the ledger cannot trust)
    assert result.code == 3
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert re.match(r"error: projection '(state|timeline)' stopped at position", errors[0])
    assert f"position {head} (builtins:dict)" in errors[0]
    assert errors[0].endswith("the live views are unchanged")
    # and readers still see the old rows of both views
    assert _demo_views(settings) == before


def test_rebuild_refuses_zero_jobs(cli: Cli) -> None:
    # when a rebuild is asked for with no process at all
    result = cli("project", "rebuild", "state", "timeline", "--jobs", "0")
    # then it is refused as a usage error naming the option, before any work
    assert result.code == 2
    assert "--jobs" in result.err
