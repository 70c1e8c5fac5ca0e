"""Opening the store safely when many processes use it at once.

**Private files.** The data directory (``SECSTATE_HOME``) and its ``views/`` are made
0700, and every file the store keeps there (SQLite databases with their ``-wal``,
``-shm`` and ``-journal``, lock files) 0600: created so, or tightened if an earlier
version left them readable by others. Anything that cannot be made private is refused,
with the reason (``StoreLocationError``): a directory or file of another user, a path that
is not a directory, a symbolic link in place of a file. A home that is itself a symbolic
link is followed: the directory it names is what must be ours. Parent directories are
created if missing (as the umask says) and otherwise left alone.

**Busy stores.** ``busy_error`` turns database trouble that says nothing about the
command (SQLite locked past its timeout, PostgreSQL lock timeouts, deadlocks,
serialization failures, lost or refused connections) into one ``StoreBusyError`` line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from domain.errors import SecStateError, StoreBusyError
from secstate.settings import Settings

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# Group and other bits: none may be set on anything in the data directory.
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


class StoreLocationError(SecStateError):
    """The configured store cannot be used safely: its data directory or a file in it is
    not private to this user and cannot be made so."""


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
    to the directory it names."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: said below
    except OSError as e:
        raise StoreLocationError(f"cannot create {what} {path}: {e.strerror}") from None
    try:
        st = os.stat(path)
    except OSError as e:
        raise StoreLocationError(f"{what} {path} cannot be used: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
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
    if not stat.S_ISREG(st.st_mode):
        raise StoreLocationError(f"{path} is not a regular file")
    _owned_and_private(str(path), st, lambda mode: os.chmod(path, mode))
    return True


def _create_private(path: Path) -> None:
    """Make ``path`` an empty 0600 file unless something is there already.

    It is made under a temporary name and linked into place, so the descriptor closed
    here is never one of a file that SQLite (in another thread) may have open.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        os.close(os.open(temporary, _CREATE_FLAGS | os.O_TRUNC, 0o600))
    except FileNotFoundError:
        raise StoreLocationError(f"cannot create {path}: its directory is missing") from None
    except OSError as e:
        raise StoreLocationError(f"cannot create {path}: {e.strerror}") from None
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process (or thread) made it first: checked by the caller
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise StoreLocationError(f"cannot create {path}: {e.strerror}") from None
        # No hard links here: create it in place (only a thread of this process opening
        # it in the same instant could lose a lock to this close).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, _CREATE_FLAGS | os.O_EXCL, 0o600))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def private_sqlite_file(path: Path) -> Path:
    """The SQLite database ``path``, created empty and 0600 if missing (SQLite gives the
    -wal and -shm it makes the database's mode); an existing one, and its side files,
    checked and tightened. Its directory must already be private (``private_dir``)."""
    if not _tighten_by_path(path):
        _create_private(path)
        _tighten_by_path(path)
    for suffix in SQLITE_SIDE_FILES:
        _tighten_by_path(path.with_name(path.name + suffix))
    return path


def open_lock_file(path: Path) -> int:
    """A read-write descriptor on the lock file ``path`` (only ever flocked, never opened
    by SQLite), created 0600 or checked and tightened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise StoreLocationError(f"cannot create {path}: its directory is missing") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise StoreLocationError(f"cannot open {path}: {e.strerror}") from None
    return _checked(path, fd)


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
        current = current.__cause__ or current.__context__
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
