"""Schema setup runs once, under the store's setup lock; a store in use takes no lock and
runs no DDL; a busy or unreachable store is a one-line refusal, not an internal error."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, make_settings, postgres_problem

from domain.errors import StoreBusyError
from projections.follower import view_follower
from projections.state import StateView
from projections.status import ERRORS_TABLE, TRACKING_TABLE
from projections.timeline import TimelineView
from secstate.bootstrap import build_ledger, open_view_db
from secstate.settings import Settings
from store import setup as store_module
from store import viewdb as base_module
from store.viewdb import ViewDB, setup_lock_key

SECSTATE_BIN = Path(sys.executable).with_name("secstate")
if not SECSTATE_BIN.exists():
    SECSTATE_BIN = Path(shutil.which("secstate") or SECSTATE_BIN)

KEYS = "k1:" + base64.b64encode(b"s" * 32).decode()
PASSWORD = "Quartz-Lantern-51c2"
CHEAP = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
}


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(CHEAP, SECSTATE_HOME=str(settings.home), SECSTATE_KEYS=KEYS, COLUMNS="200")
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    env.update(extra)
    return env


def secstate(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(SECSTATE_BIN), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_refusal(code: int, err: str, starts: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(starts), lines[0]
    assert "Traceback" not in err


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    return make_settings(backend, tmp_path / "home", schema, keys=KEYS)


@pytest.fixture
def short_setup_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    """A setup lock held by someone else makes a waiter give up after 1 s, not 60."""
    monkeypatch.setattr(store_module, "SETUP_LOCK_TIMEOUT", 1.0)
    monkeypatch.setattr(base_module, "SETUP_LOCK_TIMEOUT", 1.0)
    return 1.0


@contextlib.contextmanager
def setup_lock_held_elsewhere(settings: Settings) -> Iterator[None]:
    """The store's setup lock, held as another process would hold it."""
    if settings.uses_postgres:
        schema = settings.postgres_params()["POSTGRES_SCHEMA"]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            key = setup_lock_key(schema)
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
            yield
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.home / store_module.SETUP_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: conflicts even in this process
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def view_write_locked(settings: Settings, db: ViewDB) -> Iterator[None]:
    """What a long view transaction elsewhere holds: SQLite's write lock on the view's
    file; on PostgreSQL, the setup lock (DDL would wait for it)."""
    if settings.uses_postgres:
        with setup_lock_held_elsewhere(settings):
            yield
        return
    path = settings.home / "views" / "state.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# --- the setup lock -------------------------------------------------------------------------


def test_a_store_in_use_opens_and_follows_without_waiting_for_the_setup_lock(
    settings: Settings, short_setup_wait: float
) -> None:
    # given: a store used before (ledger and views set up)
    ledger = build_ledger(settings)
    db = open_view_db(settings, "state")
    view_follower(ledger, StateView(), db)
    ledger.close()
    # when: another process holds the setup lock while this one opens everything
    with setup_lock_held_elsewhere(settings):
        ledger = build_ledger(settings)
        try:
            follower = view_follower(ledger, StateView(), db)
            applied = follower.catch_up()
        finally:
            ledger.close()
            db.close()
    # then: nothing waited for it (a wait would have ended in StoreBusyError)
    assert applied == 0


def test_view_setup_on_existing_tables_takes_no_write_lock(
    settings: Settings, short_setup_wait: float
) -> None:
    # given: the state view set up before, and a connection that gives up on a lock at once
    ledger = build_ledger(settings)
    open_view_db(settings, "state").close()
    if settings.uses_postgres:
        db = open_view_db(settings, "state")
    else:
        db = ViewDB("sqlite", sqlite_path=settings.home / "views" / "state.sqlite3", lock_timeout=0)
    try:
        view_follower(ledger, StateView(), db)
        # when: a long write elsewhere holds the view's lock
        with view_write_locked(settings, db):
            follower = view_follower(ledger, StateView(), db)
            status = follower.status()
        # then: setting up the follower and reading its status needed no lock
        assert (status.position, status.head) == (0, 0)
    finally:
        db.close()
        ledger.close()


def test_first_use_waits_for_the_setup_lock_then_gives_up_as_a_busy_store(
    settings: Settings, short_setup_wait: float
) -> None:
    # given: an unused store whose setup lock another process holds
    # when / then
    with (
        setup_lock_held_elsewhere(settings),
        pytest.raises(StoreBusyError, match="another process has been setting up"),
    ):
        build_ledger(settings)
    # and once it is released, the first use sets the store up
    ledger = build_ledger(settings)
    try:
        assert ledger.recorder.max_notification_id() in (None, 0)
    finally:
        ledger.close()


def test_processes_setting_up_one_store_at_once_each_find_it_ready(settings: Settings) -> None:
    # given: an unused store; when: eight threads set up the ledger and both views at once
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def set_up() -> None:
        try:
            start.wait()
            ledger = build_ledger(settings)
            try:
                for view in (StateView(), TimelineView()):
                    db = open_view_db(settings, view.name)
                    try:
                        view_follower(ledger, view, db).catch_up()
                    finally:
                        db.close()
            finally:
                ledger.close()
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=set_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then
    assert failures == []
    db = open_view_db(settings, "timeline")
    try:
        needed = (TRACKING_TABLE, ERRORS_TABLE, *TimelineView.tables)
        assert db.existing_tables(needed) == set(needed)
    finally:
        db.close()


# --- busy stores ----------------------------------------------------------------------------


@contextlib.contextmanager
def ledger_write_locked(settings: Settings) -> Iterator[None]:
    """Another writer holding the ledger's write lock (SQLite) or its table lock
    (PostgreSQL, the mode the library's inserts take)."""
    if settings.uses_postgres:
        schema = settings.postgres_params()["POSTGRES_SCHEMA"]
        with psycopg.connect(POSTGRES_URL) as conn:
            conn.execute(f'LOCK TABLE "{schema}".secstate_events IN EXCLUSIVE MODE')
            yield
            conn.rollback()
        return
    conn = sqlite3.connect(settings.home / "ledger.sqlite3", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_store_locked_past_the_timeout_is_a_one_line_busy_refusal(settings: Settings) -> None:
    # given: a store in use, and a writer elsewhere that keeps the write lock
    env = child_env(settings, SECSTATE_SQLITE_LOCK_TIMEOUT="1", POSTGRES_LOCK_TIMEOUT="1")
    code, _, err = secstate(env, "account", "open", "acme")
    assert code == 0, err
    with ledger_write_locked(settings):
        # when
        code, _, err = secstate(env, "access", "check", "acme", "203.0.113.9")
    # then: refused on one line that says what to do, and nothing was recorded
    if settings.uses_postgres:
        assert_one_line_refusal(code, err, "error: the store is busy or unreachable (PostgreSQL")
        assert "try again" in err
    else:
        assert_one_line_refusal(code, err, "error: the store is busy (SQLite: database is locked)")
        assert "raise SECSTATE_SQLITE_LOCK_TIMEOUT (now 1 s)" in err
    ledger = build_ledger(settings)
    try:
        assert ledger.recorder.max_notification_id() == 1
    finally:
        ledger.close()


@pytest.mark.postgres
def test_an_unreachable_database_is_a_one_line_busy_refusal(tmp_path: Path) -> None:
    # given: a database URL where nothing listens, and the library's connect timeout short
    settings = make_settings("sqlite", tmp_path / "home", keys=KEYS)
    env = child_env(
        settings,
        SECSTATE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/test?schema=nowhere",
        POSTGRES_CONNECT_TIMEOUT="1",
    )
    # when
    code, _, err = secstate(env, "account", "open", "acme")
    # then
    assert_one_line_refusal(code, err, "error: the store is busy or unreachable (PostgreSQL")


# --- secstate init ------------------------------------------------------------------------


def test_init_sets_up_an_unused_store_once_and_then_changes_nothing(settings: Settings) -> None:
    # given: an unused store
    env = child_env(settings)
    # when
    first = secstate(env, "init", "--json")
    again = secstate(env, "init", "--json")
    # then: the views were set up by the first run only
    assert first[0] == 0, first[2]
    assert again[0] == 0, again[2]
    assert json.loads(first[1])["created"] == ["state", "timeline"]
    assert json.loads(again[1])["created"] == []
    db = open_view_db(settings, "timeline")
    try:
        needed = (TRACKING_TABLE, ERRORS_TABLE, *TimelineView.tables)
        assert db.existing_tables(needed) == set(needed)
        with db.reading() as tx:
            assert TimelineView().missing_indexes(tx) == []
    finally:
        db.close()
    code, _, err = secstate(env, "account", "open", "acme")
    assert code == 0, err


@pytest.fixture
def app_role() -> Iterator[str]:
    """A login role with no rights of its own (dropped afterwards)."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    role = "t_app_" + secrets.token_hex(5)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    yield role
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def grant_runtime_rights(schema: str, role: str) -> None:
    """What docs/architecture.md ("Persistence") tells an operator to grant."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
        )
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")


@pytest.mark.postgres
def test_after_init_a_role_without_create_rights_runs_every_command(
    tmp_path: Path, pg_schema: str, app_role: str
) -> None:
    # given: the store set up by its owner, and a role that may read and write, not create
    owner = make_settings("postgres", tmp_path / "home", pg_schema, keys=KEYS)
    code, _, err = secstate(child_env(owner), "init")
    assert code == 0, err
    grant_runtime_rights(pg_schema, app_role)
    url = POSTGRES_URL.replace("postgres@", f"{app_role}@", 1)
    env = child_env(owner, SECSTATE_DATABASE_URL=f"{url}?schema={pg_schema}")
    create = f'CREATE TABLE "{pg_schema}".probe (x int)'
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(create)  # the role really may not create
    # when: it runs commands, logins, readers and the follower
    commands: list[tuple[tuple[str, ...], str]] = [
        (("account", "open", "acme"), ""),
        (
            ("user", "register", "acme", "alice", "--email", "a@acme.example", "--password-stdin"),
            PASSWORD + "\n",
        ),
        (("user", "login", "alice", "--password-stdin"), PASSWORD + "\n"),
        (
            (
                "--source-ip",
                "198.51.100.7",
                "allowlist",
                "add",
                "acme",
                "198.51.100.0/24",
                "--label",
                "office",
            ),
            "",
        ),
        (("access", "check", "acme", "198.51.100.9"), ""),
        (("state", "acme", "--json"), ""),
        (("timeline", "--account", "acme", "--json"), ""),
        (("project", "status", "--json"), ""),
        (("project", "run", "--once"), ""),
        (("history", "alice"), ""),
    ]
    failed: dict[str, Any] = {}
    for args, stdin in commands:
        code, _, err = secstate(env, *args, stdin=stdin)
        if code != 0:
            failed[" ".join(args)] = err.strip()
    # then: every one worked
    assert failed == {}
