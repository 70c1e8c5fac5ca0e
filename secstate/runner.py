"""Supervise several followers at once, by name: one thread each, each with its own
connections (``secstate.followers`` opens them from a reader that holds no keys).

A follower whose handler fails stops, with the position and event type logged and stored
beside it; the others keep going. Database trouble is retried on a fresh connection.
``stop()`` (wired to SIGINT/SIGTERM by the CLI) lets each follower finish the batch in
hand, so every position stays exactly once.

SQLite followers poll the log. PostgreSQL followers LISTEN on the channel the ledger's
recorder NOTIFYs on each write, and still poll (slowly) should the listener drop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from domain.reader import LedgerReader
from projections.errors import ProjectionError, ProjectionFailedError
from projections.follower import Follower, ProgressFn
from secstate.followers import OpenedFollower, check_follower_names, open_follower
from secstate.settings import Settings
from store.notify import LogWaker, log_waker

log = logging.getLogger("secstate.projections")

RunProgress = Callable[[str, int, int], None]
RETRY_MAX_SECONDS = 30.0
LOG_EVERY_SECONDS = 5.0


def make_waker(settings: Settings, reader: LedgerReader) -> LogWaker:
    """NOTIFY on PostgreSQL, polling on SQLite (``store.notify``)."""
    postgres = settings.postgres_params() if settings.uses_postgres else None
    return log_waker(postgres, reader.recorder)


@dataclass
class FollowerRun:
    """One follower, what it holds open, and how its run went."""

    name: str
    opened: OpenedFollower
    start_position: int = 0
    position: int = 0
    error: str | None = None
    failed_position: int | None = None
    failed_event_type: str | None = None
    trouble: str | None = None  # what it is retrying after, while it retries
    backoff: float = 1.0
    _last_log: float = field(default=0.0, repr=False)

    @property
    def follower(self) -> Follower:
        return self.opened.follower

    @property
    def applied(self) -> int:
        return self.position - self.start_position


@dataclass(frozen=True)
class RunReport:
    followers: list[FollowerRun]
    interrupted: bool

    @property
    def failed(self) -> list[FollowerRun]:
        return [f for f in self.followers if f.error is not None]


class Runner:
    """Follows the named followers (every registered one if none) until stopped.

    Use as a context manager: followers are opened (tables created) on entry, so a bad
    name or a broken view fails before anything runs; connections close on exit.
    """

    def __init__(
        self,
        settings: Settings,
        reader: LedgerReader,
        names: Sequence[str] = (),
        *,
        batch_size: int = 2000,
        poll_interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.names = check_follower_names(list(names))
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.stopping = threading.Event()
        self.followers: list[FollowerRun] = []
        self.waker: LogWaker = make_waker(settings, reader)

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
                opened = open_follower(self.settings, self.reader, name, self.batch_size)
                try:
                    position = opened.follower.position()
                except BaseException:
                    opened.close()
                    raise
                self.followers.append(FollowerRun(name, opened, position, position))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.waker.close()
        for run in self.followers:
            run.opened.close()
        self.followers = []

    def stop(self) -> None:
        """Ask every follower to finish its batch in hand and return. Signal-safe: it only
        sets an event; the main loop of ``run`` wakes sleeping followers."""
        self.stopping.set()

    # --- running -----------------------------------------------------------------------

    def run(self, once: bool = False, progress: RunProgress | None = None) -> RunReport:
        """Follow until ``stop()`` (or, with ``once``, until each view reaches the head)."""
        if not once:
            self.waker.start()
        threads = [
            threading.Thread(
                target=self._follow, args=(run, once, progress), name=f"view-{run.name}"
            )
            for run in self.followers
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
        return RunReport(list(self.followers), self.stopping.is_set())

    def _follow(self, run: FollowerRun, once: bool, progress: RunProgress | None) -> None:
        report = self._progress_for(run, progress)
        while not self.stopping.is_set():
            try:
                if once:
                    run.follower.catch_up(progress=report, stopping=self.stopping)
                else:
                    self._follow_forever(run, report)
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
                if message != run.trouble:  # one line per change of state, not per retry
                    run.trouble = message
                    log.warning(
                        "%s: %s; retrying with backoff up to %.0fs, keeping position %d",
                        run.name,
                        message,
                        RETRY_MAX_SECONDS,
                        self._safe_position(run.follower, run.position),
                        exc_info=log.isEnabledFor(logging.DEBUG),
                    )
                self.stopping.wait(run.backoff)
                run.backoff = min(run.backoff * 2, RETRY_MAX_SECONDS)
                self._reopen(run)
        run.position = self._safe_position(run.follower, run.position)

    def _reopen(self, run: FollowerRun) -> None:
        """A new connection and follower for ``run``; on failure, the old ones stay."""
        try:
            opened = open_follower(self.settings, self.reader, run.name, self.batch_size)
        except Exception as e:
            log.warning("view %s: cannot reconnect yet: %s", run.name, e)
            return
        old, run.opened = run.opened, opened
        try:
            old.close()
        except Exception as e:
            log.debug("view %s: closing the old connection: %s", run.name, e)

    def _follow_forever(self, run: FollowerRun, report: ProgressFn) -> None:
        """Follow the log until stopping, progress reported as it goes: between catch-ups
        that found nothing, sleep the poll interval, or less when the waker says so."""
        follower = run.follower
        while not self.stopping.is_set():
            seen = self.waker.generation()
            applied = follower.catch_up(progress=report, stopping=self.stopping)
            self._recovered(run)
            if applied == 0 and not self.stopping.is_set():
                self.waker.wait(seen, self.poll_interval)

    @staticmethod
    def _recovered(run: FollowerRun) -> None:
        """After a batch went through: say once that the trouble is over."""
        if run.trouble is not None:
            log.warning(
                "%s: recovered from %s; at position %d", run.name, run.trouble, run.position
            )
            run.trouble = None
            run.backoff = 1.0

    def _progress_for(self, run: FollowerRun, progress: RunProgress | None) -> ProgressFn:
        def report(position: int, target: int) -> None:
            run.position = position
            self._recovered(run)
            now = time.monotonic()
            if position >= target or now - run._last_log >= LOG_EVERY_SECONDS:
                run._last_log = now
                log.info("view %s at position %d of %d", run.name, position, target)
            if progress:
                progress(run.name, position, target)

        return report

    def _failed(self, run: FollowerRun, error: Exception) -> None:
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
