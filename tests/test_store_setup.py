"""A busy or unreachable store is a one-line refusal, not an internal error."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import POSTGRES_URL, make_settings

from secstate.bootstrap import build_ledger
from secstate.settings import Settings

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


@pytest.mark.parametrize("backend", ["sqlite"])
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
