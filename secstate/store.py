"""Opening the store safely when many processes use it at once.

**Private files.** The data directory (``SECSTATE_HOME``) and its ``views/`` are made
0700, and every file the store keeps there (SQLite databases with their ``-wal``,
``-shm`` and ``-journal``, lock files) 0600: created so, or tightened if an earlier
version left them readable by others. Anything that cannot be made private is refused,
with the reason (``StoreLocationError``): a directory or file of another user, a
symbolic link in place of a file, a mode that cannot be changed. The machine's own
refusals (a file where the home should be, no permission) stay the ``OSError`` they are,
which the CLI reports on one line as well. A home that is itself a symbolic link is
followed: the directory it names is what must be ours. Parent directories are created if
missing (as the umask says) and otherwise left alone.

**Schema setup, once.** The library's recorders would run ``CREATE TABLE IF NOT EXISTS``
(and, on PostgreSQL, ``CREATE OR REPLACE FUNCTION``) in every process, and concurrent DDL
collides in PostgreSQL's catalog (``tuple concurrently updated``, duplicate keys in
``pg_type``). So the ledger is built with the library's ``CREATE_TABLE`` off, and
``ensure_ledger_tables`` checks the catalog first: one cheap query, no lock, in the common
case. Only if a table is missing does it take the store's setup lock (PostgreSQL: an
advisory lock per schema; SQLite: an flock on ``.setup.lock`` in the home), look again,
and call the recorders' own ``create_table()``. Views do the same through
``ViewDB.setup_transaction`` (the same advisory lock; SQLite's write lock).

**Busy stores.** ``busy_error`` turns database trouble that says nothing about the
command (SQLite locked past its timeout, PostgreSQL lock timeouts, deadlocks,
serialization failures, lost or refused connections) into one ``StoreBusyError`` line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.errors import SecStateError, StoreBusyError
from projections.base import SETUP_LOCK_TIMEOUT, setup_lock_key
from secstate.settings import Settings

if TYPE_CHECKING:
    import psycopg
    from eventsourcing.application import Application

SETUP_LOCK_FILE = ".setup.lock"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Group and other bits: none may be set on anything in the data directory.
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreLocationError(SecStateError):
    """The configured store cannot be used safely: its data directory or a file in it is
    not private to this user and cannot be made so, or the schema name is not valid."""


# --- private files ------------------------------------------------------------------------


def _owned_and_private(name: str, st: os.stat_result, chmod: Callable[[int], None]) -> None:
    """Refuse ``name`` unless it belongs to this user; drop any group/other bits."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StoreLocationError(
            f"{name} belongs to uid {st.st_uid}, not to this user (uid {uid}); "
            "secstate refuses a store another user controls"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & _SHARED_BITS:
        try:
            chmod(mode & ~_SHARED_BITS & 0o777)
        except OSError as e:
            raise StoreLocationError(
                f"{name} is open to other users (mode {mode:o}) and cannot be made private: "
                f"{e.strerror}"
            ) from None


def private_dir(path: Path, what: str = "SECSTATE_HOME") -> Path:
    """``path`` as a directory only this user can use: created 0700 if missing, an
    existing one tightened to 0700 at most. A symbolic link is followed; the checks apply
    to the directory it names. The machine's refusals (a file in the way, no permission)
    leave as the ``OSError`` they are, naming the path."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):  # replaced since mkdir looked
        raise StoreLocationError(f"{what} {path} is not a directory")
    _owned_and_private(f"{what} {path}", st, lambda mode: os.chmod(path, mode))
    return path


def _checked(path: Path, fd: int) -> int:
    """``fd`` if it is open on a regular file of ours, group/other bits dropped; else closed
    and refused."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreLocationError(f"{path} is not a regular file")
        _owned_and_private(str(path), st, lambda mode: os.fchmod(fd, mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_link(path: Path) -> StoreLocationError:
    return StoreLocationError(
        f"{path} is a symbolic link; secstate keeps only regular files in its data directory"
    )


def _tighten_by_path(path: Path) -> bool:
    """Check and tighten an existing file by its name; False if there is none.

    A database file must not be opened and closed here: closing any descriptor of a file
    drops every POSIX lock this process holds on it, SQLite's own among them (another
    connection of this process may have the database open). A name is safe to use:
    the directory is private by now, so nobody else can swap what it names.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _refuse_link(path)
    if stat.S_ISREG(st.st_mode):  # anything else SQLite refuses to open, in its words
        _owned_and_private(str(path), st, lambda mode: os.chmod(path, mode))
    return True


def _create_private(path: Path, prepare: Callable[[Path], None] | None = None) -> None:
    """Make ``path`` an empty 0600 file unless something is there already.

    It is made under a temporary name (``prepare`` may fill it in) and linked into place,
    so the descriptor closed here is never one of a file that SQLite (in another thread)
    may have open.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        os.close(os.open(temporary, _CREATE_FLAGS | os.O_TRUNC, 0o600))
        if prepare is not None:
            prepare(temporary)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None  # the name that matters
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process (or thread) made it first: checked by the caller
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(e.errno, e.strerror, str(path)) from None
        # No hard links here: create it in place (only a thread of this process opening
        # it in the same instant could lose a lock to this close).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, _CREATE_FLAGS | os.O_EXCL, 0o600))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _wal_database(path: Path) -> None:
    """Make ``path`` a SQLite database already in WAL mode (kept in its header).

    Every connection asks for WAL mode when it opens; switching a fresh file needs an
    exclusive lock, which SQLite refuses at once (no busy wait) while another connection
    is switching it too: with the mode set before the file appears, none has to."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def private_sqlite_file(path: Path) -> Path:
    """The SQLite database ``path``, created empty and 0600 if missing (SQLite gives the
    -wal and -shm it makes the database's mode); an existing one, and its side files,
    checked and tightened. Its directory must already be private (``private_dir``)."""
    if not _tighten_by_path(path):
        _create_private(path, _wal_database)
        _tighten_by_path(path)
    for suffix in SQLITE_SIDE_FILES:
        _tighten_by_path(path.with_name(path.name + suffix))
    return path


def open_lock_file(path: Path) -> int:
    """A read-write descriptor on the lock file ``path`` (only ever flocked, never opened
    by SQLite), created 0600 or checked and tightened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise
    return _checked(path, fd)


# --- PostgreSQL connections ----------------------------------------------------------------


def postgres_schema(settings: Settings) -> str:
    """The configured schema (``public`` if none), refused unless a plain lower-case name."""
    schema = settings.postgres_params().get("POSTGRES_SCHEMA") or "public"
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreLocationError(
            f"PostgreSQL schema name {schema!r} must match [a-z_][a-z0-9_]* (at most 63)"
        )
    return schema


def postgres_connection(settings: Settings) -> psycopg.Connection[Any]:
    """An autocommit connection to the settings' database (not the pool's)."""
    import psycopg

    params = settings.postgres_params()
    return psycopg.connect(
        dbname=params["POSTGRES_DBNAME"],
        host=params["POSTGRES_HOST"],
        port=int(params["POSTGRES_PORT"]),
        user=params["POSTGRES_USER"],
        password=params["POSTGRES_PASSWORD"] or None,
        autocommit=True,
    )


# --- the setup lock -----------------------------------------------------------------------


def _busy_setting_up() -> StoreBusyError:
    return StoreBusyError(
        f"the store is busy: another process has been setting up its tables for over "
        f"{SETUP_LOCK_TIMEOUT:.0f} s; try again"
    )


@contextlib.contextmanager
def _advisory_setup_lock(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    import psycopg

    key = setup_lock_key(postgres_schema(settings))
    with postgres_connection(settings) as conn:
        # A session of its own, so this setting and the lock go with it.
        conn.execute(f"SET lock_timeout = '{int(SETUP_LOCK_TIMEOUT * 1000)}ms'")
        try:
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        except psycopg.errors.LockNotAvailable:
            raise _busy_setting_up() from None
        try:
            yield conn
        finally:
            # Explicitly: the server frees a closed session's locks only once its backend
            # has exited, a moment after the client has gone on.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


@contextlib.contextmanager
def _file_setup_lock(settings: Settings) -> Iterator[None]:
    fd = open_lock_file(private_dir(settings.home, "SECSTATE_HOME") / SETUP_LOCK_FILE)
    try:
        deadline = time.monotonic() + SETUP_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _busy_setting_up() from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def ensure_postgres_schema(settings: Settings) -> None:
    """Create the configured schema if it is missing (under the setup lock)."""
    schema = postgres_schema(settings)
    with postgres_connection(settings) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
    if row and row[0]:
        return
    with _advisory_setup_lock(settings) as locked:
        locked.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


# --- the ledger's tables ------------------------------------------------------------------


def _recorders(ledger: Application[Any]) -> list[Any]:
    recorders: list[Any] = [ledger.recorder]
    if ledger.snapshots is not None:
        recorders.append(ledger.snapshots.recorder)
    return recorders


def _missing_tables(recorders: Sequence[Any]) -> list[Any]:
    """The recorders whose table is not there yet: one catalog query for all of them."""
    from eventsourcing.sqlite import SQLiteRecorder

    names = [r.events_table_name for r in recorders]
    datastore = recorders[0].datastore
    if isinstance(recorders[0], SQLiteRecorder):
        marks = ", ".join("?" * len(names))
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608 - placeholders only
                names,
            )
            present = {str(row[0]) for row in cursor.fetchall()}
    else:
        with datastore.get_connection() as conn:
            rows = conn.execute(
                "SELECT name FROM unnest(%s::text[]) AS name "
                "WHERE to_regclass(quote_ident(%s) || '.' || quote_ident(name)) IS NOT NULL",
                (names, datastore.schema),
            ).fetchall()
            present = {str(row["name"]) for row in rows}
    return [r for r in recorders if r.events_table_name not in present]


def ensure_ledger_tables(settings: Settings, ledger: Application[Any]) -> bool:
    """Make sure the ledger's tables exist (the ledger built with ``CREATE_TABLE`` off);
    True if this call created any. Costs one catalog query when they exist."""
    recorders = _recorders(ledger)
    created = False
    if settings.uses_postgres:
        if _missing_tables(recorders):
            with _advisory_setup_lock(settings) as locked:
                schema = postgres_schema(settings)
                found = locked.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
                if found is None or found[0] is None:
                    locked.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                created = _create_missing(recorders)
        # Its composite type may have appeared after the recorder was built (made by
        # another process): without the type's adapter, inserts fail.
        recorders[0].datastore.register_type_adapters()
    elif _missing_tables(recorders):
        with _file_setup_lock(settings):
            created = _create_missing(recorders)
    return created


def _create_missing(recorders: Sequence[Any]) -> bool:
    """Under the setup lock: look again, and create what is still missing."""
    missing = _missing_tables(recorders)
    for recorder in missing:
        recorder.create_table()  # the library's own DDL
    return bool(missing)


# --- busy stores --------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def busy_error(error: BaseException, settings: Settings | None = None) -> StoreBusyError | None:
    """A ``StoreBusyError`` for ``error`` (or anything it was raised from) if it is
    transient database trouble rather than a fault of the command or of secstate."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreBusyError):
            return current
        if isinstance(current, sqlite3.OperationalError):
            text = str(current).lower()
            if "locked" in text or "busy" in text:
                timeout = f" (now {settings.sqlite_lock_timeout} s)" if settings else ""
                return StoreBusyError(
                    f"the store is busy (SQLite: {_first_line(current)}); try again, or "
                    f"raise SECSTATE_SQLITE_LOCK_TIMEOUT{timeout}"
                )
        if _is_transient_postgres(current):
            return StoreBusyError(
                f"the store is busy or unreachable (PostgreSQL: {_first_line(current)}); try again"
            )
        current = current.__cause__  # what it was raised from, not what it met
    return None


def _is_transient_postgres(error: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    # Lock and statement timeouts, deadlocks, serialization failures, too many
    # connections, a server shutting down, a connection refused or lost: all of them
    # OperationalError in psycopg (pool timeouts too); InterfaceError is a closed one.
    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
