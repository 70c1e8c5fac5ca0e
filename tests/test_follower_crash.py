"""Crash safety: followers in a separate process, killed or stopped mid-way, on both backends.

About 20k events are written once per backend (many aggregates per ``ledger.save``).
Each test follows them with its own views, so the tests share the store but no view.

Run as a script, this file is the ``secstate`` command line with the slow test views
below registered (``python tests/test_follower_crash.py project run crashcount``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_followers import PositionsView, all_positions, seen
from util import wait_for

from domain.account import Account
from domain.context import RequestContext, Stamp, SteppedClock
from domain.ledger import Ledger
from domain.user import User
from domain.values import AccountKind, Role
from projections.follower import view_follower
from projections.registry import VIEWS, make_view
from projections.sql import Tx
from projections.status import read_position
from secstate.bootstrap import build_ledger, open_view_db
from secstate.settings import Settings
from store.viewdb import ViewDB

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
CONSOLE_SCRIPT = Path(sys.executable).with_name("secstate")
INFLIGHT_ENV = "SECSTATE_TEST_INFLIGHT_FILE"
SLOW_ENV = "SECSTATE_TEST_SLOW_BATCH_SECONDS"
ACCOUNTS = 200  # x ~104 events = ~20.8k events
PASSWORD = "correct horse battery staple 42"


class CrashCountView(PositionsView):
    """PositionsView that, when asked through the environment, says which batch it holds
    uncommitted and lingers there, so the test can kill or stop it mid-transaction."""

    name = "crashcount"
    tables = ("crashcount_seen",)

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        super().apply_batch(tx, events)
        inflight = os.environ.get(INFLIGHT_ENV)
        if inflight:
            Path(inflight).write_text(str(events[-1][0]))
        time.sleep(float(os.environ.get(SLOW_ENV, "0")))


class TermCountView(CrashCountView):
    name = "termcount"
    tables = ("termcount_seen",)


# --- the shared store ----------------------------------------------------------------------


def write_bulk(ledger: Ledger, accounts: int = ACCOUNTS) -> None:
    """Accounts, each with one owner who set a password and logged in a few times, and
    97 control-panel access checks (versions stay under the snapshot interval)."""
    ctx = RequestContext(source_ip="198.51.100.10", user_agent="pytest-crash")
    stamp = Stamp(ctx, ledger.clock.now())
    pending: list[Any] = []
    for a in range(accounts):
        account = Account.open(f"bulk{a}", AccountKind.CUSTOMER, f"Bulk {a}", stamp)
        user = User.register(account.id, f"owner{a}", f"owner{a}@example.com", Role.OWNER, stamp)
        user.set_password(PASSWORD, ledger.hasher, stamp)
        account.add_member(user.id, user.username, Role.OWNER.value, stamp)
        for attempt in ("wrong password", PASSWORD):
            user.login(
                attempt,
                totp_code=None,
                recovery_code=None,
                two_factor_required=False,
                lockout_threshold=5,
                hasher=ledger.hasher,
                keyring=ledger.keyring,
                stamp=stamp,
            )
        for i in range(97):
            account.check_control_panel_access(f"198.51.100.{i % 250}", stamp)
        pending += [account, user]
        if len(pending) >= 40:
            ledger.save(*pending)
            pending = []
    if pending:
        ledger.save(*pending)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings of a store holding ~20k events, written once per backend for this module."""
    from conftest import POSTGRES_URL, START, make_settings, postgres_problem

    backend = str(request.param)
    schema = None
    if backend == "postgres":
        problem = postgres_problem()
        if problem:
            pytest.skip(problem)
        import psycopg

        schema = "crash_" + os.urandom(6).hex()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    settings = make_settings(backend, tmp_path_factory.mktemp("crash") / "home", schema)
    ledger = build_ledger(settings, clock=SteppedClock(START))
    try:
        write_bulk(ledger)
    finally:
        ledger.close()
    yield settings
    if schema:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def ledger_of(store: Settings) -> Iterator[Ledger]:
    ledger = build_ledger(store)
    yield ledger
    ledger.close()


# --- processes -----------------------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env["SECSTATE_HOME"] = str(settings.home)
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    env.update(extra)
    return env


def spawn(
    command: list[str], env: dict[str, str], stderr_file: Path | None = None
) -> subprocess.Popen[str]:
    """Start ``command``; its stderr goes to ``stderr_file`` if given (to watch its log)."""
    with stderr_file.open("w") if stderr_file else open(os.devnull, "w") as sink:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink if stderr_file else subprocess.PIPE,
            text=True,
        )


def script(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def position(db: ViewDB, name: str) -> int:
    return read_position(db, name) or 0


def inflight(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def rows_of(db: ViewDB, tables: Sequence[str], upto: int | None = None) -> dict[str, list[str]]:
    """Every row of every table (with ``upto``, those at positions up to it), sorted, for
    comparing two builds."""
    found: dict[str, list[str]] = {}
    with db.reading() as tx:
        for table in tables:
            where = "" if upto is None else f" WHERE position <= {int(upto)}"
            rows = tx.query_all(f"SELECT * FROM {table}{where}")  # noqa: S608
            found[table] = sorted(repr(tuple(row)) for row in rows)
    return found


# --- tests ---------------------------------------------------------------------------------


def test_follower_killed_mid_batch_resumes_without_a_missing_or_repeated_position(
    store: Settings, ledger_of: Ledger, tmp_path: Path
) -> None:
    # given a follower process in the middle of a large catch-up, holding a batch it has
    # written but not committed
    head = all_positions(ledger_of)[-1]
    assert head > 20_000
    marker = tmp_path / "inflight"
    env = child_env(store, **{INFLIGHT_ENV: str(marker), SLOW_ENV: "0.02"})
    process = spawn(script("project", "run", "crashcount", "--batch-size", "100"), env)
    db = open_view_db(store, "crashcount")
    try:
        assert wait_for(
            lambda: (
                process.poll() is not None
                or (
                    position(db, "crashcount") >= head // 10
                    and inflight(marker) > position(db, "crashcount")
                )
            ),
            timeout=300,
            interval=0.005,
        )
        assert process.poll() is None, finish(process)
        # when it is killed there
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = position(db, "crashcount")
        uncommitted = inflight(marker)
        # Almost always mid-batch (a batch takes ~2 s); on a loaded machine the batch may
        # commit between the check and the kill, which is still a crash to recover from.
        assert 0 < killed_at <= uncommitted <= head
        # then the uncommitted batch left nothing behind
        assert seen(db, "crashcount_seen") == [
            p for p in all_positions(ledger_of) if p <= killed_at
        ]
        # and when it is restarted, it resumes where it stopped: each position exactly once
        code, _, err = finish(
            spawn(script("project", "run", "crashcount", "--once"), child_env(store))
        )
        assert code == 0, err
        assert seen(db, "crashcount_seen") == all_positions(ledger_of)
        assert position(db, "crashcount") == head
    finally:
        if process.poll() is None:
            process.kill()
        db.close()


def test_sigterm_finishes_the_batch_in_hand_saves_the_position_and_exits_zero(
    store: Settings, ledger_of: Ledger, tmp_path: Path
) -> None:
    # given a follower process in the middle of a batch
    head = all_positions(ledger_of)[-1]
    marker = tmp_path / "inflight"
    env = child_env(store, **{INFLIGHT_ENV: str(marker), SLOW_ENV: "0.02"})
    process = spawn(script("project", "run", "termcount", "--batch-size", "100"), env)
    db = open_view_db(store, "termcount")
    try:
        assert wait_for(
            lambda: process.poll() is not None or inflight(marker) > position(db, "termcount") > 0,
            timeout=300,
            interval=0.005,
        )
        assert process.poll() is None, finish(process)
        in_hand = inflight(marker)
        # when it is asked to stop
        process.send_signal(signal.SIGTERM)
        code, out, err = finish(process, timeout=60)
        # then it exits 0 after committing the batch it held, and stopped early
        assert code == 0, err
        assert "stopped cleanly" in out
        saved = position(db, "termcount")
        assert in_hand <= saved < head
        assert seen(db, "termcount_seen") == [p for p in all_positions(ledger_of) if p <= saved]
    finally:
        if process.poll() is None:
            process.kill()
        db.close()


def reference_rows(
    ledger: Ledger, name: str, path: Path, tables: Sequence[str], upto: int | None = None
) -> dict[str, list[str]]:
    """The view built in one uninterrupted pass (up to ``upto``), in a SQLite file."""
    db = ViewDB("sqlite", sqlite_path=path)
    try:
        view_follower(ledger, make_view(name), db).catch_up(stop=upto)
        return rows_of(db, tables, upto)
    finally:
        db.close()


def test_real_views_killed_mid_catch_up_resume_exactly_once_and_stop_on_sigterm(
    store: Settings, ledger_of: Ledger, tmp_path: Path
) -> None:
    # given the console script following the real views in small batches
    names = ["timeline", "state"]
    head = all_positions(ledger_of)[-1]
    env = child_env(store, SECSTATE_PROJECTION_POLL_INTERVAL="0.05")
    process = spawn([str(CONSOLE_SCRIPT), "project", "run", *names, "--batch-size", "50"], env)
    dbs = {name: open_view_db(store, name) for name in names}
    try:
        assert wait_for(
            lambda: (
                process.poll() is not None
                or all(position(db, name) >= head // 40 for name, db in dbs.items())
            ),
            timeout=300,
            interval=0.005,
        )
        assert process.poll() is None, finish(process)
        # when it is killed mid-way
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = {name: position(db, name) for name, db in dbs.items()}
        assert all(0 < p < head for p in killed_at.values())
        # and restarted, then stopped with SIGTERM once caught up
        log = tmp_path / "stderr.log"
        process = spawn([str(CONSOLE_SCRIPT), "project", "run", *names], env, log)
        assert wait_for(
            lambda: (
                process.poll() is not None
                or (
                    # (this line says its signal handlers are in place)
                    "following timeline, state" in log.read_text()
                    and all(position(db, name) == head for name, db in dbs.items())
                )
            ),
            timeout=300,
            interval=0.05,
        )
        assert process.poll() is None, finish(process)
        process.send_signal(signal.SIGTERM)
        code, out, _ = finish(process, timeout=60)
        # then it exits 0 with its positions saved at the head
        assert code == 0, log.read_text()
        assert "stopped cleanly" in out
        assert all(position(db, name) == head for name, db in dbs.items())
        # and each view holds exactly the rows of an uninterrupted build: none lost, none
        # doubled, none changed by the crash (timeline: checked past the crash point)
        bound = killed_at["timeline"] + 2000
        timeline_tables = ["timeline", "timeline_touch"]
        assert rows_of(dbs["timeline"], timeline_tables, bound) == reference_rows(
            ledger_of, "timeline", tmp_path / "timeline.sqlite3", timeline_tables, bound
        )
        with dbs["timeline"].reading() as tx:
            count, distinct = tx.query_one(
                "SELECT count(*), count(DISTINCT position) FROM timeline"
            )
        assert count == distinct == len(all_positions(ledger_of))
        state_tables = make_view("state").tables
        assert rows_of(dbs["state"], state_tables) == reference_rows(
            ledger_of, "state", tmp_path / "state.sqlite3", state_tables
        )
    finally:
        if process.poll() is None:
            process.kill()
        for db in dbs.values():
            db.close()


if __name__ == "__main__":
    # The CLI with the slow test views registered (see the module docstring).
    VIEWS["crashcount"] = CrashCountView
    VIEWS["termcount"] = TermCountView
    from secstate.cli import run

    sys.exit(run(sys.argv[1:]))
