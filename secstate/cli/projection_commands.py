"""``secstate project``: run the views' followers, see where they stand, rebuild one."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from projections.base import Follower, ProjectionFailedError, View, rebuild_together
from projections.registry import check_names, make_view, view_names
from projections.runner import Runner, RunReport, ViewStatus, view_status
from secstate.bootstrap import open_view_db
from secstate.cli.common import STATE, JsonOption, err_console, print_json, print_table, say
from secstate.locks import exclusive

project_app = typer.Typer(
    help="Keep the read views (state, timeline) up to date with the ledger.",
    no_args_is_help=True,
)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

BatchSizeOption = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        envvar="SECSTATE_PROJECTION_BATCH_SIZE",
        help="Events per transaction.",
    ),
]


class RateColumn(ProgressColumn):
    """Events per second, from rich's own moving estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "-- ev/s" if speed is None else f"{speed:,.0f} ev/s", style="progress.data.speed"
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: rich's live progress display swaps it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """Runner log lines on stderr for the length of one command."""
    logger = logging.getLogger("secstate.projections")
    handler = _StderrHandler()
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
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


@project_app.command("run")
def project_run(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Views to run (default: all): " + ", ".join(view_names())),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Catch up to the current head, then exit.")
    ] = False,
    batch_size: BatchSizeOption = 2000,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.01,
            envvar="SECSTATE_PROJECTION_POLL_INTERVAL",
            help="Seconds between looks at the log when idle (PostgreSQL is woken by "
            "NOTIFY sooner).",
        ),
    ] = 0.5,
) -> None:
    """Follow the ledger and keep views up to date until SIGINT/SIGTERM (or --once)."""
    chosen = check_names(names or [])
    with (
        _logging_to_stderr(),
        Runner(
            STATE.settings,
            STATE.ledger,
            chosen,
            batch_size=batch_size,
            poll_interval=poll_interval,
        ) as runner,
        _stop_on_signals(runner.stop),
    ):
        if once:
            report = _run_once_with_progress(runner)
        else:
            logging.getLogger("secstate.projections").info(
                "following %s (%s)", ", ".join(chosen), STATE.settings.describe_store()
            )
            report = runner.run()
    _finish(report, once)


def _run_once_with_progress(runner: Runner) -> RunReport:
    head = int(STATE.ledger.recorder.max_notification_id() or 0)
    with _progress() as bars:
        tasks: dict[str, TaskID] = {
            run.name: bars.add_task(run.name, total=max(head, run.position), completed=run.position)
            for run in runner.views
        }

        def progress(name: str, position: int, target: int) -> None:
            bars.update(tasks[name], completed=position, total=target)

        report = runner.run(once=True, progress=progress)
        for run in report.views:  # a failed view's bar shows where it stopped
            bars.update(tasks[run.name], completed=run.position)
        return report


def _finish(report: RunReport, once: bool) -> None:
    for run in report.views:
        if run.error is None:
            say(f"{run.name}: position {run.position} (+{run.applied} events)")
        else:
            err_console.print(f"error: {run.error}", markup=False, highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
    if report.interrupted:
        say("stopped cleanly; positions saved")


def _status_json(status: ViewStatus) -> dict[str, object]:
    error = status.last_error
    return {
        "view": status.view,
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


@project_app.command("status")
def project_status(
    names: Annotated[list[str] | None, typer.Argument(help="Views to show (default: all).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Each view's position, the log head, the lag and the last error, if any."""
    chosen = check_names(names or [])
    statuses = [view_status(STATE.settings, STATE.ledger, name) for name in chosen]
    if json_out:
        print_json(
            {
                "head": max((s.head for s in statuses), default=0),
                "views": [_status_json(s) for s in statuses],
            }
        )
        return
    print_table(
        "projections",
        ["view", "state", "position", "head", "lag", "last error"],
        [
            (
                s.view,
                s.state,
                s.position,
                s.head,
                s.lag,
                f"{s.last_error.failed_at.isoformat()} {s.last_error.message}"
                if s.last_error
                else "",
            )
            for s in statuses
        ],
    )


@project_app.command("rebuild")
def project_rebuild(
    names: Annotated[
        list[str],
        typer.Argument(
            help="Views to rebuild, from one shared scan of the log: " + ", ".join(view_names())
        ),
    ],
    batch_size: BatchSizeOption = 2000,
    json_out: JsonOption = False,
) -> None:
    """Rebuild views from the start beside the live ones, then swap them in atomically.

    Several views are rebuilt from one read of the log. Readers keep seeing the old
    views until the swap. A failure leaves them untouched.
    """
    views = {name: make_view(name) for name in dict.fromkeys(names)}
    with exclusive(STATE.settings, [f"rebuild-{name}" for name in views]):
        _rebuild(views, batch_size, json_out)


def _rebuild(views: dict[str, View], batch_size: int, json_out: bool) -> None:
    dbs = {name: open_view_db(STATE.settings, name) for name in views}
    stopping = threading.Event()
    started = time.monotonic()
    label = ", ".join(views)
    try:
        followers = [Follower(STATE.ledger, views[n], dbs[n], batch_size) for n in views]
        head = followers[0].head()
        with _stop_on_signals(stopping.set), _progress() as bars:
            task = bars.add_task(f"rebuild {label}", total=head)
            try:
                position = rebuild_together(
                    followers,
                    lambda done, target: bars.update(task, completed=done, total=target),
                    stopping=stopping,
                )
            except ProjectionFailedError as e:
                unchanged = "view is" if len(views) == 1 else "views are"
                err_console.print(
                    f"error: {e}; the live {unchanged} unchanged", markup=False, highlight=False
                )
                raise typer.Exit(EXIT_FAILED) from None
            bars.update(task, completed=max(position, 0))
    finally:
        for db in dbs.values():
            db.close()
    if position < 0:
        err_console.print("rebuild interrupted; the live views are unchanged")
        raise typer.Exit(EXIT_INTERRUPTED)
    seconds = time.monotonic() - started
    if json_out:
        print_json(
            {
                "views": list(views),
                "view": label,
                "position": position,
                "seconds": round(seconds, 3),
                "events_per_second": round(position / seconds, 1) if seconds else None,
            }
        )
    else:
        say(f"rebuilt {label} up to position {position} in {seconds:.1f}s; swapped in")


def register(app: typer.Typer) -> None:
    app.add_typer(project_app, name="project")
