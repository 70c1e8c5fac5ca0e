"""The embedded store's files are private: the data directory 0700, every file in it 0600.

These run on SQLite only: a PostgreSQL store keeps nothing in the data directory but
the key ring file (tested where it is made). Commands run as the installed console
script, as an operator would run them.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SECSTATE_BIN = Path(sys.executable).with_name("secstate")
if not SECSTATE_BIN.exists():
    SECSTATE_BIN = Path(shutil.which("secstate") or SECSTATE_BIN)

PASSWORD = "Quartz-Lantern-0f3a"
CHEAP = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
}


def env_for(home: Path, *, keys: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(CHEAP, SECSTATE_HOME=str(home), COLUMNS="200")
    if keys:
        env["SECSTATE_KEYS"] = "k1:" + base64.b64encode(b"f" * 32).decode()
    return env


def secstate(home: Path, *args: str, stdin: str = "", keys: bool = True) -> tuple[int, str]:
    proc = subprocess.run(
        [str(SECSTATE_BIN), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env_for(home, keys=keys),
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr


def ok(home: Path, *args: str, stdin: str = "", keys: bool = True) -> None:
    code, err = secstate(home, *args, stdin=stdin, keys=keys)
    assert code == 0, err


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(home: Path) -> dict[str, int]:
    """Every directory and file under ``home`` (and home itself), by relative path."""
    found = {".": mode(home)}
    for path in home.rglob("*"):
        found[str(path.relative_to(home))] = mode(path)
    return found


def not_private(home: Path) -> dict[str, str]:
    wrong = {}
    for name, bits in modes(home).items():
        want = 0o700 if (home / name).is_dir() else 0o600
        if bits != want:
            wrong[name] = f"{bits:o}"
    return wrong


@pytest.fixture
def hold_open() -> Iterator[list[sqlite3.Connection]]:
    """Connections the test keeps open, so SQLite keeps each database's -wal and -shm."""
    held: list[sqlite3.Connection] = []
    yield held
    for conn in held:
        conn.close()


def hold(held: list[sqlite3.Connection], path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    held.append(conn)


def test_an_existing_world_readable_home_is_tightened(tmp_path: Path) -> None:
    # given: a home someone made 0755 (mkdir with the usual umask)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    # when
    ok(home, "account", "open", "acme")
    # then
    assert mode(home) == 0o700
    assert not_private(home) == {}


def test_every_file_the_store_makes_is_private_wal_and_shm_included(
    tmp_path: Path, hold_open: list[sqlite3.Connection]
) -> None:
    # given: a fresh home, the key ring to be made by the store itself
    home = tmp_path / "home"
    ok(home, "account", "open", "acme", keys=False)
    hold(hold_open, home / "ledger.sqlite3")
    # when: commands write, and both views are caught up (the timeline indexed)
    ok(
        home,
        "--source-ip",
        "198.51.100.7",
        "allowlist",
        "add",
        "acme",
        "198.51.100.0/24",
        "--label",
        "office",
        keys=False,
    )
    ok(home, "access", "check", "acme", "198.51.100.9", keys=False)
    ok(
        home,
        "user",
        "register",
        "acme",
        "alice",
        "--email",
        "a@acme.example",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        keys=False,
    )
    ok(home, "project", "run", "--once", keys=False)
    for view in ("state", "timeline"):
        hold(hold_open, home / "views" / f"{view}.sqlite3")
    ok(home, "user", "login", "alice", "--password-stdin", stdin=PASSWORD + "\n", keys=False)
    ok(home, "totp", "enrol", "alice", keys=False)  # seals a seed: the key ring is made
    ok(home, "state", "acme", keys=False)
    ok(home, "timeline", "--account", "acme", keys=False)
    # then: every directory 0700 and every file 0600, the SQLite side files among them
    found = modes(home)
    for name in ("ledger.sqlite3", "views/state.sqlite3", "views/timeline.sqlite3"):
        assert {name, name + "-wal", name + "-shm"} <= set(found)
    assert {"keyring.json", "views"} <= set(found)
    assert not_private(home) == {}


def test_an_earlier_versions_readable_files_are_tightened(
    tmp_path: Path, hold_open: list[sqlite3.Connection]
) -> None:
    # given: a store as the code before this change left it: home 0755, the ledger and a
    # view 0644 with their -wal and -shm, and a rebuild's lock file 0644
    home = tmp_path / "home"
    ok(home, "account", "open", "acme")
    ok(home, "project", "run", "--once")
    old = [home / "ledger.sqlite3", home / "views" / "state.sqlite3"]
    for database in old:
        hold(hold_open, database)
    lock = home / "views" / ".rebuild-state.lock"
    lock.touch()
    for path in [home, home / "views"]:
        path.chmod(0o755)
    for database in old:
        for path in [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]:
            path.chmod(0o644)
    lock.chmod(0o644)
    # when: a command, a view catch-up and a rebuild use them
    ok(home, "access", "check", "acme", "203.0.113.9")
    ok(home, "state", "acme")
    ok(home, "project", "rebuild", "state")
    # then
    assert not_private(home) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_home_owned_by_another_user_is_refused_with_the_reason(tmp_path: Path) -> None:
    # given: a home that belongs to nobody
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    # when
    code, err = secstate(home, "account", "open", "acme")
    # then: refused on one line, and nothing made in it
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: SECSTATE_HOME {home} belongs to uid 65534, not to this user (uid 0); "
        "secstate refuses a store another user controls"
    ]
    assert list(home.iterdir()) == []
    assert mode(home) == 0o700


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    # given
    home = tmp_path / "home"
    home.write_text("not a directory")
    # when
    code, err = secstate(home, "account", "open", "acme")
    # then
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: creating the secstate home directory: File exists ({home})"
    ]


def test_a_home_that_is_a_symlink_is_followed_and_its_target_made_private(
    tmp_path: Path,
) -> None:
    # given: the home links to a directory elsewhere (another disk, say), made 0755
    target = tmp_path / "disk" / "secstate"
    target.mkdir(parents=True)
    target.chmod(0o755)
    home = tmp_path / "home"
    home.symlink_to(target)
    # when
    ok(home, "account", "open", "acme")
    # then: the store is in the target, which is now private; the link is left as it is
    assert home.is_symlink()
    assert (target / "ledger.sqlite3").is_file()
    assert mode(target) == 0o700
    assert not_private(target) == {}


def test_a_database_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    # given: the ledger file is a link to a file somewhere else
    home = tmp_path / "home"
    ok(home, "account", "open", "acme")
    elsewhere = tmp_path / "elsewhere.sqlite3"
    (home / "ledger.sqlite3").rename(elsewhere)
    (home / "ledger.sqlite3").symlink_to(elsewhere)
    # when
    code, err = secstate(home, "account", "show", "acme")
    # then
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: {home / 'ledger.sqlite3'} is a symbolic link; secstate keeps only "
        "regular files in its data directory"
    ]
