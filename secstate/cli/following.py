"""What the commands that follow the log share (``project run``, ``relay run``,
``consume``): log lines on stderr, stopping on signals, the end-of-run report, and a
follower's status as JSON."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any

import typer

from secstate.cli.common import say
from secstate.cli.render import error, inert_lines
from secstate.followers import FollowerReport
from secstate.runner import RunReport

EXIT_FAILED = 1

BatchSizeOption = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=1_000_000,  # a batch is one transaction, its rows held in memory
        envvar="SECSTATE_PROJECTION_BATCH_SIZE",
        help="Events per transaction.",
    ),
]
LOGGERS = ("secstate.projections", "consumers")


class _UtcFormatter(logging.Formatter):
    """UTC times; every line inert (messages quote stored errors, names and positions)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")

    def format(self, record: logging.LogRecord) -> str:
        return inert_lines(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: rich's live progress display swaps it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@contextmanager
def logging_to_stderr() -> Iterator[None]:
    """The followers' and consumers' log lines on stderr for the length of one command."""
    handler = _StderrHandler()
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``stop`` (the work in hand finishes); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        stop()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def finish(report: RunReport, once: bool) -> None:
    for run in report.followers:
        if run.error is None:
            say(f"{run.name}: position {run.position} (+{run.applied} events)")
        else:
            error(f"error: {run.error}")
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
    if report.interrupted:
        say("stopped cleanly; positions saved")


def status_json(status: FollowerReport) -> dict[str, object]:
    error = status.last_error
    return {
        "view": status.name,
        "state": status.state,
        "position": status.position,
        "head": status.head,
        "lag": status.lag,
        "last_error": None
        if error is None
        else {
            "position": error.position,
            "event_type": error.event_type,
            "message": error.message,
            "failed_at": error.failed_at,
        },
    }
