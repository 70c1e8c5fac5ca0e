"""Busy stores: database trouble that says nothing about the command (SQLite locked past
its timeout, PostgreSQL lock timeouts, deadlocks, serialization failures, lost or
refused connections) becomes one ``StoreBusyError`` line.
"""

from __future__ import annotations

import sqlite3

from domain.errors import StoreBusyError

# --- busy stores --------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def busy_error(
    error: BaseException, sqlite_lock_timeout: int | None = None
) -> StoreBusyError | None:
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
                timeout = f" (now {sqlite_lock_timeout} s)" if sqlite_lock_timeout else ""
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
