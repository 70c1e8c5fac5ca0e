"""Private files: the store's data directory (``SECSTATE_HOME``) and its ``views/`` are
0700, and every file the store keeps there (SQLite databases with their ``-wal``,
``-shm`` and ``-journal``, lock files) 0600: created so, or tightened if an earlier
version left them readable by others. Anything that cannot be made private is refused,
with the reason (``StoreLocationError``): a directory or file of another user, a
symbolic link in place of a file, a mode that cannot be changed. The machine's own
refusals (a file where the home should be, no permission) stay the ``OSError`` they are.
A home that is itself a symbolic link is followed: the directory it names is what must
be ours. Parent directories are created if missing (as the umask says) and otherwise
left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from domain.errors import SecStateError

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
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
