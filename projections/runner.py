"""Run several followers at once: one thread per view, each with its own view database.

A view whose handler fails stops, with the position and event type logged and stored
beside it; the other views keep going. ``stop()`` (wired to SIGINT/SIGTERM by the CLI)
lets each follower finish the batch in hand, so every position stays exactly once.

SQLite followers poll the log. PostgreSQL followers LISTEN on the channel the ledger's
recorder NOTIFYs on each write, and still poll (slowly) should the listener drop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from domain.ledger import Ledger
from projections.errors import ProjectionError, ProjectionFailedError
from projections.follower import Follower, ProgressFn, view_follower
from projections.registry import check_names, make_view
from projections.sql import ViewDB
from projections.status import FollowerStatus, ViewError, read_last_error, read_position
from secstate.bootstrap import open_view_db
from secstate.settings import Settings

log = logging.getLogger("secstate.projections")

ViewProgress = Callable[[str, int, int], None]
RETRY_MAX_SECONDS = 30.0
LOG_EVERY_SECONDS = 5.0


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

    def __init__(self, params: dict[str, str], channel: str, retry_seconds: float = 1.0) -> None:
        super().__init__()
        self.params = params
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._closed = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._loop, name="pg-listen", daemon=True)

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(
            dbname=self.params["POSTGRES_DBNAME"],
            host=self.params["POSTGRES_HOST"],
            port=int(self.params["POSTGRES_PORT"]),
            user=self.params["POSTGRES_USER"],
            password=self.params.get("POSTGRES_PASSWORD") or None,
            autocommit=True,
            connect_timeout=10,
        )
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


def make_waker(settings: Settings, ledger: Ledger) -> LogWaker:
    channel = getattr(ledger.recorder, "channel_name", None)
    if settings.uses_postgres and isinstance(channel, str):
        return PostgresListener(settings.postgres_params(), channel)
    return LogWaker()


@dataclass
class ViewRun:
    """One view's follower and how its run went."""

    name: str
    follower: Follower
    db: ViewDB
    start_position: int = 0
    position: int = 0
    error: str | None = None
    failed_position: int | None = None
    failed_event_type: str | None = None
    _last_log: float = field(default=0.0, repr=False)

    @property
    def applied(self) -> int:
        return self.position - self.start_position


@dataclass(frozen=True)
class RunReport:
    views: list[ViewRun]
    interrupted: bool

    @property
    def failed(self) -> list[ViewRun]:
        return [v for v in self.views if v.error is not None]


class Runner:
    """Follows the named views (all registered ones if none) until stopped.

    Use as a context manager: views are opened (tables created) on entry, so a bad name
    or a broken view fails before anything runs; connections close on exit.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        names: Sequence[str] = (),
        *,
        batch_size: int = 2000,
        poll_interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.names = check_names(list(names))
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.stopping = threading.Event()
        self.views: list[ViewRun] = []
        self.waker: LogWaker = make_waker(settings, ledger)

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        try:
            for name in self.names:
                view = make_view(name)
                db = open_view_db(self.settings, name)
                try:
                    follower = view_follower(self.ledger, view, db, self.batch_size)
                except BaseException:
                    db.close()
                    raise
                position = follower.position()
                self.views.append(ViewRun(name, follower, db, position, position))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.waker.close()
        for run in self.views:
            run.db.close()
        self.views = []

    def stop(self) -> None:
        """Ask every follower to finish its batch in hand and return. Signal-safe: it only
        sets an event; the main loop of ``run`` wakes sleeping followers."""
        self.stopping.set()

    # --- running -----------------------------------------------------------------------

    def run(self, once: bool = False, progress: ViewProgress | None = None) -> RunReport:
        """Follow until ``stop()`` (or, with ``once``, until each view reaches the head)."""
        if not once:
            self.waker.start()
        threads = [
            threading.Thread(
                target=self._follow, args=(run, once, progress), name=f"view-{run.name}"
            )
            for run in self.views
        ]
        for thread in threads:
            thread.daemon = True  # a second Ctrl-C must not wait for them
            thread.start()
        woken = False
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)
            if self.stopping.is_set() and not woken:
                self.waker.bump()  # sleeping followers see the stop at once
                woken = True
        return RunReport(list(self.views), self.stopping.is_set())

    def _follow(self, run: ViewRun, once: bool, progress: ViewProgress | None) -> None:
        report = self._progress_for(run, progress)
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                if once:
                    run.follower.catch_up(progress=report, stopping=self.stopping)
                else:
                    self._follow_forever(run.follower, report)
                run.position = run.follower.position()
                return
            except ProjectionError as e:
                self._failed(run, e)
                return
            except Exception as e:
                # Database trouble, not the event's fault: keep it for `project status`,
                # then retry on a fresh connection (a dropped one never comes back).
                message = f"{type(e).__name__}: {e}"
                self._record(run.follower, message)
                if once:
                    self._failed(run, e)
                    return
                log.warning(
                    "view %s: %s; retrying in %.0fs", run.name, message, backoff, exc_info=True
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                self._reopen(run)
        run.position = self._safe_position(run.follower, run.position)

    def _reopen(self, run: ViewRun) -> None:
        """A new connection and follower for ``run``; on failure, the old ones stay."""
        try:
            db = open_view_db(self.settings, run.name)
        except Exception as e:
            log.warning("view %s: cannot reconnect yet: %s", run.name, e)
            return
        try:
            follower = view_follower(self.ledger, make_view(run.name), db, self.batch_size)
        except Exception as e:
            db.close()
            log.warning("view %s: cannot reconnect yet: %s", run.name, e)
            return
        old = run.db
        run.db, run.follower = db, follower
        try:
            old.close()
        except Exception as e:
            log.debug("view %s: closing the old connection: %s", run.name, e)

    def _follow_forever(self, follower: Follower, report: ProgressFn) -> None:
        """``Follower.run_forever`` with progress reported as it goes."""
        while not self.stopping.is_set():
            seen = self.waker.generation()
            applied = follower.catch_up(progress=report, stopping=self.stopping)
            if applied == 0 and not self.stopping.is_set():
                self.waker.wait(seen, self.poll_interval)

    def _progress_for(self, run: ViewRun, progress: ViewProgress | None) -> ProgressFn:
        def report(position: int, target: int) -> None:
            run.position = position
            now = time.monotonic()
            if position >= target or now - run._last_log >= LOG_EVERY_SECONDS:
                run._last_log = now
                log.info("view %s at position %d of %d", run.name, position, target)
            if progress:
                progress(run.name, position, target)

        return report

    def _failed(self, run: ViewRun, error: Exception) -> None:
        run.error = str(error)
        if isinstance(error, ProjectionFailedError):
            run.failed_position = error.position
            run.failed_event_type = error.event_type
        run.position = self._safe_position(run.follower, run.position)
        log.error("view %s stopped: %s (the other views keep going)", run.name, error)

    def _record(self, follower: Follower, message: str) -> None:
        try:
            follower.record_error(follower.position(), None, message)
        except Exception as e:  # the view database itself may be what is failing
            log.debug("could not record the error of %s: %s", follower.name, e)

    @staticmethod
    def _safe_position(follower: Follower, default: int) -> int:
        try:
            return follower.position()
        except Exception:
            return default


# --- status without touching the views ------------------------------------------------

ViewState = Literal["not started", "caught up", "behind", "failed"]


@dataclass(frozen=True)
class ViewStatus:
    view: str
    position: int
    head: int
    lag: int
    state: ViewState
    last_error: ViewError | None

    @property
    def failed_at(self) -> datetime | None:
        return self.last_error.failed_at if self.last_error else None


def view_status(settings: Settings, ledger: Ledger, name: str) -> ViewStatus:
    """Where a view stands, read without creating its tables."""
    check_names([name])
    head = int(ledger.recorder.max_notification_id() or 0)
    db = open_view_db(settings, name)
    try:
        position = read_position(db, name)
        error = read_last_error(db, name)
    finally:
        db.close()
    status = FollowerStatus(name, position or 0, head, error)
    state: ViewState
    if error is not None:
        state = "failed"
    elif position is None:
        state = "not started"
    else:
        state = "caught up" if status.lag == 0 else "behind"
    return ViewStatus(name, status.position, head, status.lag, state, error)
