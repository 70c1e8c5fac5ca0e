"""Failures of the machine are one clear line and exit 1, on SQLite and PostgreSQL.

A directory where a file is expected, a directory that cannot be written, a full disk,
a file-size limit, a home that cannot be created, a ledger file that cannot be opened or
written: each prints ``error: <what it was doing>: <reason> (<where>)`` and exits 1, with
no traceback. ``--output`` files appear whole or not at all. A closed stdout pipe ends
the command quietly with 141 (128 + SIGPIPE).

We run as root here, where file modes stop nothing: "cannot be written" is made with the
immutable attribute (``chattr +i``) as root, and with file modes otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_settings
from eventsourcing.persistence import OperationalError
from fixture_store import load_postgres, load_sqlite

from secstate.bootstrap import build_ledger
from secstate.cli import run
from secstate.cli.common import STATE
from secstate.cli.failures import describe

FIXTURE = "history-v1"
CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
}
SECSTATE_BIN = Path(sys.executable).with_name("secstate")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one line a failure prints (and nothing on stdout, and no traceback)."""
        assert self.code == 1, (self.code, self.out, self.err)
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), lines[0]
        assert "Traceback" not in self.err
        return lines[0]


class Cli:
    def __init__(
        self, env: dict[str, str], capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
    ) -> None:
        self.env = env
        self.capsys = capsys
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setattr(sys, "stdin", io.StringIO(""))

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = run(list(args))
        captured = self.capsys.readouterr()
        assert STATE._ledger is None
        return Result(code, captured.out, captured.err)

    def script(self, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
        """The console script, in the store's environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
        return subprocess.Popen([str(SECSTATE_BIN), *args], env={**env, **self.env}, **popen)


@pytest.fixture
def store_env(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """A store holding the history fixture (161 events), its views caught up on first use."""
    home = tmp_path / "home"
    env = {"SECSTATE_HOME": str(home), **CHEAP_ENV}
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
        build_ledger(make_settings(backend, home, schema)).close()
        load_postgres(FIXTURE, POSTGRES_URL, schema)
    else:
        load_sqlite(FIXTURE, home / "ledger.sqlite3")
    return env


@pytest.fixture
def cli(
    store_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    return Cli(store_env, capsys, monkeypatch)


EVENTS = 161


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` (a file or a directory) refuses writes, even to root, until the end."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make {path} immutable: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _limit_file_size(size: int) -> None:
    """In the child: files may not grow past ``size`` bytes (writes fail with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


# --- --output ---------------------------------------------------------------------------------


def test_output_naming_a_directory_is_refused_and_the_directory_left_alone(
    cli: Cli, tmp_path: Path
) -> None:
    # given
    directory = tmp_path / "exports"
    directory.mkdir()
    (directory / "keep.txt").write_text("keep")
    # when
    line = cli("timeline", "--output", str(directory)).error_line()
    # then
    assert f"--output: {directory} is a directory" in line
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


def test_output_under_a_file_is_refused_naming_it(cli: Cli, tmp_path: Path) -> None:
    # given
    (tmp_path / "plain").write_text("x")
    # when
    line = cli("timeline", "--output", str(tmp_path / "plain" / "t.csv")).error_line()
    # then
    assert f"--output: {tmp_path / 'plain'} is not a directory" in line


def test_output_in_a_directory_that_cannot_be_written_is_one_line(cli: Cli, tmp_path: Path) -> None:
    # given
    directory = tmp_path / "locked"
    directory.mkdir()
    target = directory / "t.jsonl"
    # when
    with unwritable(directory):
        line = cli("timeline", "--format", "jsonl", "--output", str(target)).error_line()
    # then
    assert line.startswith(f"error: creating a temporary file in {directory} for --output: ")
    assert ("Permission denied" in line) or ("Operation not permitted" in line)
    assert list(directory.iterdir()) == []


def test_output_to_a_full_device_is_one_line_and_the_device_stays_a_device(cli: Cli) -> None:
    # given
    full = Path("/dev/full")
    if not full.exists() or not stat.S_ISCHR(full.stat().st_mode):
        pytest.skip("no /dev/full here")
    # when
    line = cli("timeline", "--limit", "0", "--output", str(full)).error_line()
    # then
    assert line == "error: writing --output /dev/full: No space left on device (/dev/full)"
    assert stat.S_ISCHR(full.stat().st_mode)


def test_output_to_a_fifo_is_written_into_it_not_replaced(cli: Cli, tmp_path: Path) -> None:
    # given: a named pipe with a reader waiting
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # when
        result = cli("timeline", "--limit", "5", "--format", "jsonl", "--output", str(fifo))
        data = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    # then
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [json.loads(line)["position"] for line in data.decode().splitlines()] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "pipe"]


def test_an_export_that_fails_halfway_leaves_the_old_file_and_no_partial_one(
    cli: Cli, tmp_path: Path
) -> None:
    # given: the views caught up, an older export in place, and files limited to 64 KiB
    assert cli("timeline", "--limit", "1").code == 0
    exports = tmp_path / "exports"
    exports.mkdir()
    target = exports / "timeline.jsonl"
    target.write_text("the older export\n")
    args = ("timeline", "--limit", "0", "--format", "jsonl", "--output", str(target))
    # when: the export (about 105 KiB) outgrows the limit
    proc = cli.script(
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: _limit_file_size(64 * 1024),
    )
    out, err = proc.communicate(timeout=120)
    failed = Result(proc.returncode, out.decode(), err.decode())
    # and then it is run without the limit
    done = cli(*args)
    # then
    line = failed.error_line()
    assert line.startswith(f"error: writing --output {target}: File too large (")
    assert done.code == 0, done.err
    assert len(target.read_text().splitlines()) == EVENTS
    assert [p.name for p in exports.iterdir()] == ["timeline.jsonl"]


# --- stdout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_stdout_closed_early_ends_quietly_with_141(cli: Cli, fmt: str) -> None:
    # given: the views caught up (so the output starts at once)
    assert cli("timeline", "--limit", "1").code == 0
    # when: the reader takes a few bytes and goes, as `| head -c 10` does
    proc = cli.script(
        *("timeline", "--limit", "0", "--format", fmt),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # a small pipe: the output cannot all fit in it
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    # then
    assert len(head) == 10
    assert proc.returncode == 141
    assert err == b""


def test_stdout_on_a_full_device_is_one_line(cli: Cli) -> None:
    # given
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    # when
    with open("/dev/full", "wb") as full:
        proc = cli.script("timeline", "--limit", "0", stdout=full, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=120)
    # then
    line = Result(proc.returncode, "", err.decode()).error_line()
    assert line == "error: writing to stdout: No space left on device"


# --- the store ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("obstacle", "reason"), [("file", "File exists"), ("parent", "Not a")])
def test_a_home_that_cannot_be_created_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    obstacle: str,
    reason: str,
) -> None:
    # given: a file where the home of the SQLite store, or a directory above it, should be
    (tmp_path / "taken").write_text("x")
    home = tmp_path / "taken" if obstacle == "file" else tmp_path / "taken" / "home"
    cli = Cli({"SECSTATE_HOME": str(home), **CHEAP_ENV}, capsys, monkeypatch)
    # when
    line = cli("account", "open", "acme").error_line()
    # then
    assert line.startswith("error: creating the secstate home directory: " + reason)
    assert line.endswith(f"({home})")


def test_a_ledger_file_that_cannot_be_opened_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a directory where the SQLite ledger should be
    home = tmp_path / "home"
    (home / "ledger.sqlite3").mkdir(parents=True)
    cli = Cli({"SECSTATE_HOME": str(home), **CHEAP_ENV}, capsys, monkeypatch)
    # when
    line = cli("account", "show", "acme").error_line()
    # then
    assert line == (
        f"error: using the event store: unable to open database file (SQLite store in {home})"
    )


def test_a_read_only_ledger_refuses_writes_in_one_line_and_still_answers_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    home = tmp_path / "home"
    load_sqlite(FIXTURE, home / "ledger.sqlite3")
    cli = Cli({"SECSTATE_HOME": str(home), **CHEAP_ENV}, capsys, monkeypatch)
    assert cli("account", "show", "fx-acme").code == 0  # the first use sets the store up
    # when
    with unwritable(home / "ledger.sqlite3"):
        write = cli("account", "open", "acme")
        read = cli("account", "show", "fx-acme", "--json")
    # then
    assert write.error_line() == (
        "error: using the event store: attempt to write a readonly database "
        f"(SQLite store in {home})"
    )
    assert read.code == 0, read.err
    assert json.loads(read.out)["account"]["name"] == "fx-acme"


def _full_database_error(tmp_path: Path) -> sqlite3.Error:
    """SQLite's own "database or disk is full", from a database allowed two pages."""
    conn = sqlite3.connect(tmp_path / "tiny.sqlite3")
    try:
        conn.execute("PRAGMA max_page_count = 2")
        conn.execute("CREATE TABLE t (x TEXT)")
        with pytest.raises(sqlite3.Error) as caught:
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    finally:
        conn.close()
    return caught.value


def test_a_full_database_is_described_in_one_line_also_as_the_library_wraps_it(
    tmp_path: Path,
) -> None:
    # given: the real error, bare and wrapped as eventsourcing wraps sqlite3's errors
    error = _full_database_error(tmp_path)
    try:
        raise OperationalError(error) from error
    except OperationalError as e:
        wrapped = e
    # when
    lines = [describe(e, "account open", f"SQLite store in {tmp_path}") for e in (error, wrapped)]
    # then
    assert (
        lines
        == [
            f"error: running secstate account open: database or disk is full "
            f"(SQLite store in {tmp_path})"
        ]
        * 2
    )


def test_an_error_that_is_not_the_machines_is_left_an_internal_error(tmp_path: Path) -> None:
    # given: a bug, one raised while an OSError was being handled, and a SQL mistake
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as sql_mistake:
        conn.execute("SELEC 1")
    conn.close()
    try:
        try:
            Path(tmp_path / "missing").read_text()
        except OSError:
            raise KeyError("while handling it")  # noqa: B904 - its context, not its cause
    except KeyError as e:
        during = e
    # when / then
    assert describe(ValueError("a bug"), "timeline", None) is None
    assert describe(during, "timeline", None) is None
    assert describe(sql_mistake.value, "timeline", None) is None


def _real_disk_full_error(tmp_path: Path) -> sqlite3.OperationalError:
    """A genuine SQLITE_FULL, from a database capped at a few pages."""
    conn = sqlite3.connect(tmp_path / "tiny.sqlite3")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        conn.execute("CREATE TABLE t (b BLOB)")
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    except sqlite3.OperationalError as e:
        return e
    finally:
        conn.close()
    raise AssertionError("the capped database took the row")


def test_a_view_stopped_by_a_full_disk_is_one_exit_1_line_not_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a store with an account, and a disk that fills up as the state view writes
    from projections.state import StateView
    from secstate.cli import run

    monkeypatch.setenv("SECSTATE_HOME", str(tmp_path / "home"))
    assert run(["account", "open", "acme"]) == 0
    full = _real_disk_full_error(tmp_path)

    def apply_batch(self: StateView, tx: object, events: object) -> None:
        raise full

    monkeypatch.setattr(StateView, "apply_batch", apply_batch)
    capsys.readouterr()
    # when the state is asked for (the view catches up first)
    code = run(["state", "acme"])
    # then one line says what failed and that the view resumes, exit 1
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert "full" in err[0]
    assert "stopped at position 1" in err[0]
    assert err[0].endswith("and resumes from there")
