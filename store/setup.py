"""Schema setup, once, when many processes open the store at the same moment.

The library's recorders would run ``CREATE TABLE IF NOT EXISTS`` (and, on PostgreSQL,
``CREATE OR REPLACE FUNCTION``) in every process, and concurrent DDL collides in
PostgreSQL's catalog (``tuple concurrently updated``, duplicate keys in ``pg_type``). So
the ledger is built with the library's ``CREATE_TABLE`` off, and ``ensure_ledger_tables``
checks the catalog first: one cheap query, no lock, in the common case. Only if a table
is missing does it take the store's setup lock (PostgreSQL: an advisory lock per schema;
SQLite: an flock on ``.setup.lock`` in the home), look again, and call the recorders' own
``create_table()``. Views do the same through ``ViewDB.setup_transaction`` (the same
advisory lock; SQLite's write lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.errors import StoreBusyError
from store.connect import postgres_connect, schema_of
from store.files import StoreLocationError, open_lock_file, private_dir
from store.viewdb import SETUP_LOCK_TIMEOUT, setup_lock_key

if TYPE_CHECKING:
    import psycopg
    from eventsourcing.application import Application

SETUP_LOCK_FILE = ".setup.lock"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class StoreConfig:
    """Where the store is: a home for the embedded SQLite files (and lock files), and the
    PostgreSQL parameters (``POSTGRES_*``) when the events live there."""

    home: Path
    postgres: Mapping[str, str] | None = None
    sqlite_lock_timeout: int = 10

    def require_postgres(self) -> Mapping[str, str]:
        if self.postgres is None:
            raise StoreLocationError("the store is embedded SQLite: there is no PostgreSQL")
        return self.postgres


# --- PostgreSQL connections ----------------------------------------------------------------


def postgres_schema(where: StoreConfig) -> str:
    """The configured schema (``public`` if none), refused unless a plain lower-case name."""
    schema = schema_of(where.postgres or {})
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreLocationError(
            f"PostgreSQL schema name {schema!r} must match [a-z_][a-z0-9_]* (at most 63)"
        )
    return schema


def postgres_connection(where: StoreConfig) -> psycopg.Connection[Any]:
    """An autocommit connection to the store's database (not the pool's)."""
    return postgres_connect(where.require_postgres())


# --- the setup lock -----------------------------------------------------------------------


def _busy_setting_up() -> StoreBusyError:
    return StoreBusyError(
        f"the store is busy: another process has been setting up its tables for over "
        f"{SETUP_LOCK_TIMEOUT:.0f} s; try again"
    )


@contextlib.contextmanager
def _advisory_setup_lock(where: StoreConfig) -> Iterator[psycopg.Connection[Any]]:
    import psycopg

    key = setup_lock_key(postgres_schema(where))
    with postgres_connection(where) as conn:
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
def _file_setup_lock(where: StoreConfig) -> Iterator[None]:
    fd = open_lock_file(private_dir(where.home, "SECSTATE_HOME") / SETUP_LOCK_FILE)
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


def ensure_postgres_schema(where: StoreConfig) -> None:
    """Create the configured schema if it is missing (under the setup lock)."""
    schema = postgres_schema(where)
    with postgres_connection(where) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
    if row and row[0]:
        return
    with _advisory_setup_lock(where) as locked:
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


def ensure_ledger_tables(where: StoreConfig, ledger: Application[Any]) -> bool:
    """Make sure the ledger's tables exist (the ledger built with ``CREATE_TABLE`` off);
    True if this call created any. Costs one catalog query when they exist."""
    recorders = _recorders(ledger)
    created = False
    if where.postgres is not None:
        if _missing_tables(recorders):
            with _advisory_setup_lock(where) as locked:
                schema = postgres_schema(where)
                found = locked.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
                if found is None or found[0] is None:
                    locked.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                created = _create_missing(recorders)
        # Its composite type may have appeared after the recorder was built (made by
        # another process): without the type's adapter, inserts fail.
        recorders[0].datastore.register_type_adapters()
    elif _missing_tables(recorders):
        with _file_setup_lock(where):
            created = _create_missing(recorders)
    return created


def _create_missing(recorders: Sequence[Any]) -> bool:
    """Under the setup lock: look again, and create what is still missing."""
    missing = _missing_tables(recorders)
    for recorder in missing:
        recorder.create_table()  # the library's own DDL
    return bool(missing)
