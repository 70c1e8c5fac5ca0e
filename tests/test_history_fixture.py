"""History stays readable across releases.

``tests/fixtures/history-v1`` is a store written by the code as it was before the
hardening work (every event type, a snapshot, hostile text in every free-text field),
with the JSON output of ``state``, ``state --at``, ``history`` and ``timeline`` that code
gave for it. Today's code must read the same rows, on SQLite and PostgreSQL, into the
same answers.

A field added to an output since is allowed only where ``ADDED_SINCE`` declares it with
the value it must have for old history; anything else that differs fails.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_settings
from fixture_store import golden, load_postgres, load_sqlite

from secstate.bootstrap import build_ledger
from secstate.cli import run

# Every fixture store, oldest first: each was written by the code of its time.
FIXTURES = sorted(
    path.name
    for path in (Path(__file__).parent / "fixtures").iterdir()
    if (path / "rows.jsonl").exists()
)

# Wherever these keys appear, they depend on the moment of reading, not on history.
MOMENT_DEPENDENT = frozenset({"as_of", "password_age_days"})

# Output fields added after the fixture was written: key -> the value old history gives.
ADDED_SINCE: dict[str, Any] = {
    # An API key's last recorded use (ApiKeyIndex.Used, new with the hardening): none before.
    "last_used_at": None,
    "last_used_ip": None,
}


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in MOMENT_DEPENDENT}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def differences(expected: Any, actual: Any, where: str = "$") -> list[str]:
    """Where ``actual`` does not read as ``expected`` (declared additions aside)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in expected.keys() - actual.keys():
            found.append(f"{where}.{key}: missing")
        for key in actual.keys() - expected.keys():
            if key not in ADDED_SINCE:
                found.append(f"{where}.{key}: new, undeclared field")
            elif actual[key] != ADDED_SINCE[key]:
                found.append(f"{where}.{key}: {actual[key]!r} for old history")
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        found = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found += differences(e, a, f"{where}[{i}]")
        return found
    return [] if expected == actual else [f"{where}: {actual!r}, expected {expected!r}"]


def cli_json(home: Path, env: dict[str, str], *args: str) -> Any:
    import contextlib

    saved = {k: v for k, v in os.environ.items() if k.startswith("SECSTATE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)
    assert code == 0, (args, err.getvalue())
    text = out.getvalue()
    if args[0] == "timeline":
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    return json.loads(text)


def golden_argv() -> dict[str, list[str]]:
    sys.path.insert(0, str(Path(__file__).with_name("fixtures")))
    from make_history_fixture import golden_commands

    return golden_commands()


@pytest.fixture(params=FIXTURES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fixture_env(
    backend: str, fixture_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, str]:
    """A store holding the fixture's rows, and the environment that points the CLI at it."""
    home = tmp_path / "home"
    env = {
        "SECSTATE_HOME": str(home),
        "SECSTATE_ARGON2_TIME_COST": "1",
        "SECSTATE_ARGON2_MEMORY_KIB": "8",
        "SECSTATE_ARGON2_PARALLELISM": "1",
    }
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
        ledger = build_ledger(make_settings(backend, home, schema))  # creates the tables
        ledger.close()
        load_postgres(fixture_name, POSTGRES_URL, schema)
    else:
        load_sqlite(fixture_name, home / "ledger.sqlite3")
    return env


def test_every_fixture_store_reads_as_the_code_that_wrote_it_read_it(
    fixture_name: str, fixture_env: dict[str, str], tmp_path: Path
) -> None:
    # given: old rows in a fresh store, and what the code of their time answered for them
    expected = golden(fixture_name)
    commands = golden_argv()
    assert sorted(expected) == sorted(commands)
    # when: today's code answers the same questions
    answers = {name: cli_json(tmp_path, fixture_env, *argv) for name, argv in commands.items()}
    # then
    problems = {
        name: differences(normalise(expected[name]), normalise(answers[name])) for name in commands
    }
    assert {name: found[:10] for name, found in problems.items() if found} == {}


def test_every_stored_class_and_class_version_is_in_a_fixture() -> None:
    # given every row of every fixture
    from fixture_store import read_rows

    from domain.catalogue import EVENT_CLASSES

    stored: set[tuple[str, int]] = set()
    snapshots = 0
    for name in FIXTURES:
        for row in read_rows(name):
            if row.table == "snapshots":
                snapshots += 1
                continue
            version = json.loads(row.state).get("class_version", 1)
            stored.add((row.topic, version))
    # when: what today's catalogue can read
    wanted = {
        (topic, version)
        for topic, cls in EVENT_CLASSES.items()
        for version in range(1, cls.class_version + 1)
    }
    # then: each class, at each of its versions, was written by some release into a
    # fixture (a new event type or class version needs a fixture of its own)
    assert wanted - stored == set()
    assert snapshots > 0


def test_every_event_class_declares_its_version_and_upcasters() -> None:
    from domain.catalogue import EVENT_CLASSES

    for topic, cls in EVENT_CLASSES.items():
        assert "class_version" in vars(cls), f"{topic} declares no class_version"
        for version in range(1, cls.class_version):
            assert hasattr(cls, f"upcast_v{version}_v{version + 1}"), topic
