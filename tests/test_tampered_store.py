"""A store edited behind the ledger's back: no stored topic is ever imported, and every
read path refuses a row it cannot trust with one line naming it, on SQLite and PostgreSQL.

Each test writes a small history, edits one row with plain SQL (a topic naming a module
of the attacker's choosing, a deleted middle version, undecodable state, a field of the
wrong type, a creation event naming another aggregate class, a tampered snapshot), then
runs every read path: a command that loads the aggregate, a login, ``state`` (the view's
follower), ``state --at``, ``history``, ``timeline`` and ``project rebuild``.

The module a topic names is a real file on ``sys.path`` that writes a marker when
imported: the proof that nothing was imported is that the marker never appears.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, make_settings

from domain import commands as c
from domain.context import RequestContext
from domain.user import User
from secstate.bootstrap import build_ledger
from secstate.cli import run

PASSWORD = "Granite-Meadow-" + secrets.token_hex(4)
AT = "2030-01-01T00:00:00Z"  # after everything: --at replays the whole history


@dataclass
class Store:
    backend: str
    home: Path
    schema: str | None
    env: dict[str, str]

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the ledger's tables (``{events}``, ``{snapshots}``)."""
        if self.backend == "sqlite":
            text = statement.format(events="stored_events", snapshots="stored_snapshots")
            conn = sqlite3.connect(self.home / "ledger.sqlite3")
            try:
                with conn:
                    rows = conn.execute(text, params).fetchall()
            finally:
                conn.close()
            return rows
        text = statement.format(
            events=f'"{self.schema}".secstate_events',
            snapshots=f'"{self.schema}".secstate_snapshots',
        ).replace("?", "%s")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            cursor = conn.execute(text, params)
            return cursor.fetchall() if cursor.description else []

    def key(self, originator: uuid.UUID) -> Any:
        return originator.hex if self.backend == "sqlite" else originator

    def position(self, originator: uuid.UUID, version: int) -> int:
        column = "rowid" if self.backend == "sqlite" else "notification_id"
        [(position,)] = self.sql(
            f"SELECT {column} FROM {{events}} "  # noqa: S608 - a column name of ours
            "WHERE originator_id = ? AND originator_version = ?",
            (self.key(originator), version),
        )
        return int(position)


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """An account with a user who has logged in a few times (versions 1..6)."""
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    home = tmp_path / "home"
    settings = make_settings(backend, home, schema)
    env = {
        "SECSTATE_HOME": str(home),
        "SECSTATE_ARGON2_TIME_COST": "1",
        "SECSTATE_ARGON2_MEMORY_KIB": "1024",
        "SECSTATE_ARGON2_PARALLELISM": "1",
    }
    if schema:
        env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    ledger = build_ledger(settings)
    ctx = RequestContext(source_ip="198.51.100.7", user_agent="pytest")
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    ledger.register_user(
        c.RegisterUser(
            account="acme", username="alice", email="alice@acme.example", password=PASSWORD
        ),
        ctx,
    )
    for _ in range(4):
        ledger.login(c.Login(username="alice", password=PASSWORD), ctx)
    ledger.close()
    return Store(backend, home, schema, env)


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module on sys.path that leaves a marker file when imported."""
    name = f"evil_{secrets.token_hex(4)}"
    marker = tmp_path / f"{name}.imported"
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Boom:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield name, marker
    sys.modules.pop(name, None)


@dataclass
class Result:
    code: int
    out: str
    err: str


def secstate(store: Store, *args: str, stdin: str = "") -> Result:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SECSTATE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(store.env)
    out, err = io.StringIO(), io.StringIO()
    real_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
    finally:
        sys.stdin = real_stdin
        for key in store.env:
            os.environ.pop(key, None)
        os.environ.update(saved)
    return Result(code, out.getvalue(), err.getvalue())


USER = User.create_id("alice")
READ_PATHS: dict[str, tuple[list[str], str]] = {
    "command": (["user", "disable", "alice", "--reason", "test"], ""),
    "show": (["user", "show", "alice"], ""),
    "login": (["user", "login", "alice", "--password-stdin"], PASSWORD + "\n"),
    "state-view": (["state", "acme"], ""),
    "state-at": (["state", "acme", "--at", AT], ""),
    "history": (["history", "acme"], ""),
    "timeline": (["timeline", "--limit", "0"], ""),
    "rebuild": (["project", "rebuild", "state", "timeline", "--jobs", "1"], ""),
}


def assert_refused_naming(result: Result, *needles: str) -> None:
    """Exit 3 and one error line naming the problem (after a rebuild's progress line)."""
    assert result.code == 3, (result.code, result.out, result.err)
    lines = [line for line in result.err.strip().splitlines() if not line.startswith("rebuild ")]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.err + result.out


@pytest.mark.parametrize("path", list(READ_PATHS))
@pytest.mark.parametrize("topic_of", ["module:attribute", "module"])
def test_a_topic_naming_a_foreign_module_is_refused_and_never_imported(
    store: Store, evil_module: tuple[str, Path], path: str, topic_of: str
) -> None:
    # given: the user's third event now names the attacker's module
    name, marker = evil_module
    topic = f"{name}:Boom" if topic_of == "module:attribute" else name
    position = store.position(USER, 3)
    store.sql(
        "UPDATE {events} SET topic = ? WHERE originator_id = ? AND originator_version = 3",
        (topic, store.key(USER)),
    )
    args, stdin = READ_PATHS[path]
    # when
    result = secstate(store, *args, stdin=stdin)
    # then: refused, naming the row, and the module was never imported
    assert not marker.exists(), f"{path} imported {topic!r}"
    assert name not in sys.modules
    assert_refused_naming(result, f"position {position}", "version 3", "refusing to import")


@pytest.mark.parametrize("topic", ["this:s", "os:system", "subprocess:Popen", "secstate.cli:run"])
def test_well_known_modules_named_by_a_topic_are_refused_before_import(
    store: Store, topic: str
) -> None:
    # given
    store.sql(
        "UPDATE {events} SET topic = ? WHERE originator_id = ? AND originator_version = 2",
        (topic, store.key(USER)),
    )
    had_this = "this" in sys.modules
    # when
    result = secstate(store, "state", "acme", "--at", AT)
    # then: no Zen of Python, no import, one line
    assert "Beautiful is better than ugly" not in result.out + result.err
    assert ("this" in sys.modules) == had_this
    assert_refused_naming(result, "version 2", repr(topic))


@pytest.mark.parametrize("path", ["command", "login", "state-at", "history", "state-view"])
def test_a_deleted_middle_version_is_named_on_every_replay(store: Store, path: str) -> None:
    # given: version 3 of the user is gone, versions 4.. remain
    store.sql(
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 3",
        (store.key(USER),),
    )
    position = store.position(USER, 4)
    args, stdin = READ_PATHS[path]
    # when
    result = secstate(store, *args, stdin=stdin)
    # then
    expected = "missing" if path != "state-view" else "versions between are missing"
    assert_refused_naming(result, f"position {position}", "version 4", expected)


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        pytest.param(b"\xff\xfe not json", "cannot be decoded", id="undecodable"),
        pytest.param(b"[1, 2, 3]", "not a JSON object", id="not-an-object"),
        pytest.param(None, "field counts_toward_lockout holds str", id="wrong-type"),
        pytest.param(b"{}", "missing field(s)", id="missing-fields"),
    ],
)
@pytest.mark.parametrize("path", ["command", "state-at", "state-view", "rebuild"])
def test_a_row_whose_state_does_not_fit_its_class_is_named(
    store: Store, state: bytes | None, problem: str, path: str
) -> None:
    # given: one of the user's failed-login-free LoginSucceeded rows edited; for the
    # wrong-type case, a LoginFailed whose flag became text
    version = 3
    if state is None:
        ctx = RequestContext()
        ledger = build_ledger(make_settings(store.backend, store.home, store.schema))
        with contextlib.suppress(Exception):
            ledger.login(c.Login(username="alice", password="wrong-" + PASSWORD), ctx)
        ledger.close()
        version = 7
        [(raw,)] = store.sql(
            "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = 7",
            (store.key(USER),),
        )
        state = bytes(raw).replace(b'"counts_toward_lockout":true', b'"counts_toward_lockout":"1"')
        assert b'"counts_toward_lockout":"1"' in state
    position = store.position(USER, version)
    store.sql(
        "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (state, store.key(USER), version),
    )
    args, stdin = READ_PATHS[path]
    # when
    result = secstate(store, *args, stdin=stdin)
    # then
    assert_refused_naming(result, f"position {position}", f"version {version}", problem)


def test_a_creation_event_naming_a_foreign_aggregate_class_is_refused(
    store: Store, evil_module: tuple[str, Path]
) -> None:
    # given: User.Registered now says the aggregate is the attacker's class
    name, marker = evil_module
    [(raw,)] = store.sql(
        "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = 1",
        (store.key(USER),),
    )
    edited = bytes(raw).replace(b'"secstate.User"', f'"{name}:Boom"'.encode())
    assert edited != bytes(raw)
    store.sql(
        "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = 1",
        (edited, store.key(USER)),
    )
    # when
    results = [secstate(store, *READ_PATHS[p][0]) for p in ("show", "state-at", "history")]
    # then
    assert not marker.exists()
    for result in results:
        assert_refused_naming(result, "version 1", "creation event names aggregate topic")


def test_an_event_of_another_aggregate_class_in_a_history_is_refused(store: Store) -> None:
    # given: the user's version 3 now carries an Account event's topic (same state)
    store.sql(
        "UPDATE {events} SET topic = ? WHERE originator_id = ? AND originator_version = 3",
        ("secstate.Account.ControlPanelAccessDenied", store.key(USER)),
    )
    # when
    result = secstate(store, "user", "show", "alice")
    # then: either the state does not fit the class, or the class not the aggregate
    assert_refused_naming(result, "version 3")


def test_a_tampered_snapshot_is_refused_and_says_it_is_only_a_cache(
    store: Store, evil_module: tuple[str, Path]
) -> None:
    # given: enough logins for a snapshot, whose aggregate topic is then edited
    name, marker = evil_module
    ledger = build_ledger(make_settings(store.backend, store.home, store.schema))
    ctx = RequestContext()
    for _ in range(100):
        ledger.login(c.Login(username="alice", password=PASSWORD), ctx)
    ledger.close()
    [(raw,)] = store.sql(
        "SELECT state FROM {snapshots} WHERE originator_id = ?", (store.key(USER),)
    )
    store.sql(
        "UPDATE {snapshots} SET state = ? WHERE originator_id = ?",
        (bytes(raw).replace(b'"secstate.User"', f'"{name}:Boom"'.encode()), store.key(USER)),
    )
    # when
    result = secstate(store, "user", "show", "alice")
    # then
    assert not marker.exists()
    assert_refused_naming(
        result, "snapshot", "untrusted aggregate topic", "deleting it loses nothing"
    )
    # and deleting the snapshot, as the message says, makes the user readable again
    store.sql("DELETE FROM {snapshots} WHERE originator_id = ?", (store.key(USER),))
    assert secstate(store, "user", "show", "alice").code == 0


def test_an_untouched_store_reads_on_every_path(store: Store) -> None:
    # given / when / then: the harness itself works on the untouched store
    for path, (args, stdin) in READ_PATHS.items():
        if path == "command":
            continue  # it disables the user, which the login after it would meet
        result = secstate(store, *args, stdin=stdin)
        assert result.code == 0, (path, result.err)
