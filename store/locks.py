"""Exclusive locks for maintenance jobs (a view rebuild), across processes and machines.

Two rebuilds of one view would build the same shadow table and race to swap it in; the
second must be refused at once with a clear message, not fail half-way through.
SQLite: an flock on a file beside the views. PostgreSQL: a session advisory lock, keyed by
schema and job, held on its own connection. Both are released when the process ends, even
by SIGKILL, so a crashed job never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from domain.errors import SecStateError
from store.files import open_lock_file, private_dir
from store.setup import StoreConfig, postgres_connection, postgres_schema


class JobAlreadyRunningError(SecStateError):
    """Another process holds the lock of this maintenance job."""


@contextmanager
def _file_lock(where: StoreConfig, job: str) -> Iterator[None]:
    home = private_dir(where.home, "SECSTATE_HOME")
    directory = private_dir(home / "views", "the views directory")
    fd = open_lock_file(directory / f".{job}.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobAlreadyRunningError(
                f"another process is already running {job!r} on this store; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextmanager
def _advisory_lock(where: StoreConfig, job: str) -> Iterator[None]:
    import psycopg

    key = f"secstate:{postgres_schema(where)}:{job}"
    with postgres_connection(where) as conn:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
        ).fetchone()
        if not row or not row[0]:
            raise JobAlreadyRunningError(
                f"another process is already running {job!r} on this database schema; "
                "wait for it to finish"
            )
        try:
            yield
        finally:
            # Unlock explicitly: the server frees a closed session's locks only once its
            # backend has exited, a moment after the client has gone on. A broken
            # connection has lost the lock anyway.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


@contextmanager
def exclusive(where: StoreConfig, jobs: Sequence[str]) -> Iterator[None]:
    """Hold every job's lock (taken in sorted order, so two callers cannot deadlock)."""
    lock = _advisory_lock if where.postgres is not None else _file_lock
    with ExitStack() as stack:
        for job in sorted(set(jobs)):
            stack.enter_context(lock(where, job))
        yield
