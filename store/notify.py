"""Waking followers when the log may have grown: polling everywhere, and on PostgreSQL
LISTEN on the channel the ledger's recorder NOTIFYs on each write.

A ``LogWaker`` is a counter bumped whenever the log may have grown; followers read
``generation()`` before catching up and ``wait(seen, timeout)`` after, so a bump that
arrives in between is never lost (``projections.follower.Waker``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from store.connect import postgres_connect

log = logging.getLogger("secstate.projections")


class LogWaker:
    """A counter bumped whenever the log may have grown; followers sleep on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)

    def start(self) -> None:
        """Nothing to start: SQLite followers just poll."""

    def close(self) -> None:
        self.bump()


class PostgresListener(LogWaker):
    """LISTENs on the ledger's NOTIFY channel on its own connection and bumps on each one.

    While the connection is down it reconnects in the background; followers meanwhile
    fall back on polling, and get one bump after reconnecting for what they missed.
    """

    def __init__(self, params: Mapping[str, str], channel: str, retry_seconds: float = 1.0) -> None:
        super().__init__()
        self.params = dict(params)
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._closed = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._loop, name="pg-listen", daemon=True)

    def _connect(self) -> Any:
        from psycopg import sql

        conn = postgres_connect(self.params, connect_timeout=10)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return conn

    def start(self) -> None:
        # LISTEN before the first catch-up, so nothing written after it goes unnoticed.
        try:
            self._conn = self._connect()
        except Exception as e:
            log.warning("cannot LISTEN on %s (%s); polling until it works", self.channel, e)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed.is_set():
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except Exception:
                    self._closed.wait(self.retry_seconds)
                    continue
                log.info("listening on %s again", self.channel)
                self.bump()
            try:
                for _ in self._conn.notifies(timeout=0.5, stop_after=1):
                    self.bump()
            except Exception as e:
                log.warning("LISTEN connection lost (%s); polling until it is back", e)
                self._close_conn()
                self.bump()
        self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._close_conn()
        super().close()


def log_waker(postgres: Mapping[str, str] | None, recorder: object) -> LogWaker:
    """A listener on the recorder's NOTIFY channel on PostgreSQL, else a polling waker."""
    channel = getattr(recorder, "channel_name", None)
    if postgres is not None and isinstance(channel, str):
        return PostgresListener(postgres, channel)
    return LogWaker()
