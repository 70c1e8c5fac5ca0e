"""Failures of the machine, not of the program: a missing directory, a full disk, a
read-only database. ``secstate.cli.run`` turns them into one line and exit 1,
``error: <what it was doing>: <reason> (<where>)``, instead of a traceback.

What it was doing comes from the innermost ``doing()`` block the error left, else from
the innermost frame of a known part of the program (creating the home directory,
opening the event store, using the read views ...), else from the command itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

_NOTE = "secstate was "

# sqlite3 primary result codes that describe the machine (a file, a disk, a lock), not a
# bug: SQLITE_PERM, BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, AUTH, NOTADB.
_SQLITE_ENVIRONMENT = frozenset((3, 5, 6, 8, 10, 11, 13, 14, 23, 26))

# (module, function) or module prefix -> what the program was doing there; innermost wins.
_FUNCTIONS = {
    ("secstate.bootstrap", "ensure_home"): "creating the secstate home directory",
    ("secstate.keyring", "_ensure_home"): "creating the secstate home directory",
    ("secstate.bootstrap", "load_keyring"): "reading the key ring",
    ("store.locks", "exclusive"): "taking the rebuild lock",
}
# Helpers that do a job for whoever called them: the caller's frame says what it was.
_ON_BEHALF = ("store.files",)
_MODULES = (
    ("secstate.bootstrap", "opening the store"),
    ("store.viewdb", "using the read views"),
    ("store.", "opening the store"),
    ("eventsourcing.", "using the event store"),
    ("domain.", "using the event store"),
    ("projections.", "using the read views"),
)


def note_doing(error: BaseException, what: str) -> None:
    """Say what ``error`` interrupted, unless a more precise block already said."""
    if _explicit(error) is None:
        error.add_note(_NOTE + what)


@contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the activity an ``OSError`` or database error raised inside interrupted."""
    try:
        yield
    except Exception as e:
        note_doing(e, what)
        raise


def _explicit(error: BaseException) -> str | None:
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_NOTE):
            return note.removeprefix(_NOTE)
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was explicitly raised from (``raise ... from e``, as the
    event store library wraps sqlite3's errors); an error merely raised while another
    was being handled is not taken for it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _from_frames(tb: TracebackType | None) -> str | None:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        module = str(frame.f_globals.get("__name__", ""))
        if module in _ON_BEHALF:
            continue
        found = _FUNCTIONS.get((module, frame.f_code.co_name))
        if found:
            return found
        for prefix, what in _MODULES:
            if module == prefix or module.startswith(prefix):
                return what
    return None


def _activity(error: BaseException, command: str) -> str:
    for link in _chain(error):
        found = _explicit(link)
        if found:
            return found
    for link in _chain(error):
        found = _from_frames(link.__traceback__)
        if found:
            return found
    return f"running secstate {command}".rstrip()


def _where_os(error: OSError) -> str:
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f" ({' -> '.join(paths)})" if paths else ""


def describe(error: BaseException, command: str, store: str | None) -> str | None:
    """The error line for a failure of the machine, or None if ``error`` is not one.

    ``command`` is what was run (``timeline``, ``account show``); ``store`` describes
    where the store is (for database errors, which do not name their file)."""
    import sqlite3  # here: only a failing command needs it

    for link in _chain(error):
        if isinstance(link, OSError):
            reason = link.strerror or str(link) or type(link).__name__
            return f"error: {_activity(error, command)}: {reason}{_where_os(link)}"
        if isinstance(link, sqlite3.Error):
            code = getattr(link, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _SQLITE_ENVIRONMENT:
                where = f" ({store})" if store else ""
                return f"error: {_activity(error, command)}: {link}{where}"
            return None
    return None
