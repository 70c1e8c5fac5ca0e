"""``secstate project``: run the views' followers, see where they stand, rebuild one."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    TimeRemainingColumn,
)
from rich.text import Text

from domain.errors import DamagedHistoryError
from domain.ledger import Ledger
from projections.errors import ProjectionFailedError
from projections.follower import view_follower
from projections.rebuild import rebuild_together
from projections.registry import check_names, make_view, view_names
from projections.runner import Runner, RunReport, ViewStatus, view_status
from projections.view import View
from secstate.bootstrap import build_ledger, open_view_db, store_config
from secstate.cli.common import STATE, JsonOption, print_json, print_table, say
from secstate.cli.render import err_console, error, inert, inert_lines, text_column
from secstate.settings import Settings
from store.locks import exclusive
from store.viewdb import ViewDB

project_app = typer.Typer(
    help="Keep the read views (state, timeline) up to date with the ledger.",
    no_args_is_help=True,
)

EXIT_FAILED = 1
EXIT_DAMAGED = 3  # the store holds a row the ledger cannot trust, as everywhere else
EXIT_INTERRUPTED = 130

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


class RateColumn(ProgressColumn):
    """Events per second, from rich's own moving estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "-- ev/s" if speed is None else f"{speed:,.0f} ev/s", style="progress.data.speed"
        )


def _progress() -> Progress:
    return Progress(
        text_column(),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


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
            max=3600,
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
            run.name: bars.add_task(
                inert(run.name), total=max(head, run.position), completed=run.position
            )
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
            error(f"error: {run.error}")
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
        typer.Argument(help="Views to rebuild: " + ", ".join(view_names())),
    ],
    batch_size: BatchSizeOption = 2000,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=256,
            help="Processes rebuilding at once (default: one a view, at most one a CPU); "
            "1 rebuilds every view from one shared scan of the log.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Rebuild views from the start beside the live ones, then swap them in atomically.

    Several views are rebuilt in parallel processes (--jobs), or from one read of the
    log with --jobs 1. Readers keep seeing the old views until the swap, which happens
    only once every view is built. A failure leaves them untouched.
    """
    views = {name: make_view(name) for name in dict.fromkeys(names)}
    processes = min(len(views), jobs if jobs is not None else _usable_cpus())
    with exclusive(store_config(STATE.settings), [f"rebuild-{name}" for name in views]):
        if processes > 1:
            _rebuild_parallel(list(views), processes, batch_size, json_out)
        else:
            _rebuild(views, batch_size, json_out)


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _rebuild(views: dict[str, View], batch_size: int, json_out: bool) -> None:
    dbs = {name: open_view_db(STATE.settings, name) for name in views}
    stopping = threading.Event()
    started = time.monotonic()
    label = ", ".join(views)
    try:
        followers = [view_follower(STATE.ledger, views[n], dbs[n], batch_size) for n in views]
        head = followers[0].head()
        failure: ProjectionFailedError | None = None
        with _stop_on_signals(stopping.set), _progress() as bars:
            task = bars.add_task(inert(f"rebuild {label}"), total=head)
            try:
                position = rebuild_together(
                    followers,
                    lambda done, target: bars.update(task, completed=done, total=target),
                    stopping=stopping,
                )
            except ProjectionFailedError as e:
                failure = e
            else:
                bars.update(task, completed=max(position, 0))
        if failure is not None:  # said once the progress bar is gone
            unchanged = "view is" if len(views) == 1 else "views are"
            error(f"error: {failure}; the live {unchanged} unchanged")
            damaged = isinstance(failure.cause, DamagedHistoryError)
            raise typer.Exit(EXIT_DAMAGED if damaged else EXIT_FAILED) from None
    finally:
        for db in dbs.values():
            db.close()
    if position < 0:
        error("rebuild interrupted; the live views are unchanged")
        raise typer.Exit(EXIT_INTERRUPTED)
    seconds = time.monotonic() - started
    _report_rebuild(list(views), 1, position, seconds, dict.fromkeys(views, seconds), json_out)


def _report_rebuild(
    names: list[str],
    jobs: int,
    position: int,
    seconds: float,
    built: dict[str, float],
    json_out: bool,
) -> None:
    """``built``: each view's seconds from the start of its build to its swap."""
    label = ", ".join(names)
    if json_out:
        print_json(
            {
                "views": names,
                "view": label,
                "position": position,
                "seconds": round(seconds, 3),
                "events_per_second": round(position / seconds, 1) if seconds else None,
                "jobs": jobs,
                "per_view": {
                    name: {
                        "seconds": round(built[name], 3),
                        "events_per_second": round(position / built[name], 1)
                        if built[name]
                        else None,
                    }
                    for name in names
                },
            }
        )
    else:
        say(f"rebuilt {label} up to position {position} in {seconds:.1f}s; swapped in")


# --- rebuild in parallel processes ---------------------------------------------------------


@dataclass(frozen=True)
class _RebuildJob:
    """What one child process rebuilds (it opens its own ledger and view databases)."""

    index: int
    names: tuple[str, ...]
    settings: Settings
    batch_size: int
    stop_at: int
    parent_pid: int


class _ChildStop:
    """Set when the parent says abort, this child got SIGTERM, or the parent is gone."""

    def __init__(self, abort: Any, parent_pid: int) -> None:
        self.abort = abort
        self.parent_pid = parent_pid
        self.terminated = threading.Event()

    def is_set(self) -> bool:
        return self.abort.is_set() or self.terminated.is_set() or os.getppid() != self.parent_pid


def _rebuild_child(job: _RebuildJob, opening: Any, messages: Any, go: Any, abort: Any) -> None:
    """A child's whole rebuild: build the shadows up to ``job.stop_at``, say "ready", and
    swap them in only once the parent sets ``go`` (never if it sets ``abort``).

    Every outcome goes back through ``messages`` as one final tuple: ("done", position
    or -1 if not swapped, build seconds), ("failed", message) or ("crashed", message).
    """
    # Ctrl-C reaches the whole process group: the parent alone decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = _ChildStop(abort, job.parent_pid)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.terminated.set())
    ledger: Ledger | None = None
    dbs: list[ViewDB] = []
    try:
        # Two processes creating the same PostgreSQL tables at once can fail with "tuple
        # concurrently updated": open one at a time.
        with opening:
            ledger = build_ledger(job.settings)
            followers = []
            for name in job.names:
                dbs.append(open_view_db(job.settings, name))
                followers.append(view_follower(ledger, make_view(name), dbs[-1], job.batch_size))
        started = time.monotonic()
        built = 0.0

        def progress(done: int, target: int) -> None:
            messages.put(("progress", job.index, done))

        def before_swap(position: int) -> bool:
            nonlocal built
            built = time.monotonic() - started
            messages.put(("ready", job.index, position))
            while not go.is_set() and not stop.is_set():
                go.wait(0.2)
            return bool(go.is_set())

        position = rebuild_together(
            followers, progress, stop, stop_at=job.stop_at, before_swap=before_swap
        )
        messages.put(("done", job.index, position, built))
    except ProjectionFailedError as e:
        damaged = isinstance(e.cause, DamagedHistoryError)
        messages.put(("damaged" if damaged else "failed", job.index, str(e)))
    except BaseException as e:  # the parent reports it; this process only ends
        messages.put(("crashed", job.index, f"{type(e).__name__}: {e}"))
    finally:
        for db in dbs:
            db.close()
        if ledger is not None:
            ledger.close()


def _rebuild_parallel(names: list[str], jobs: int, batch_size: int, json_out: bool) -> None:
    """Each group of views rebuilt by its own process (its own scan and decode of the log,
    its own GIL), all up to the same head, swapped in only once all are built."""
    groups = [tuple(names[i::jobs]) for i in range(jobs)]
    started = time.monotonic()
    head = int(STATE.ledger.recorder.max_notification_id() or 0)
    context = multiprocessing.get_context("spawn")  # no copy of this process's connections
    opening, messages, go, abort = context.Lock(), context.Queue(), context.Event(), context.Event()
    children = [
        context.Process(
            target=_rebuild_child,
            args=(
                _RebuildJob(i, group, STATE.settings, batch_size, head, os.getpid()),
                opening,
                messages,
                go,
                abort,
            ),
            name="secstate-rebuild-" + "-".join(group),
            daemon=True,
        )
        for i, group in enumerate(groups)
    ]
    stopping = threading.Event()
    ready: set[int] = set()
    outcome: dict[int, tuple[Any, ...]] = {}
    missing: dict[int, int] = {}
    with _stop_on_signals(stopping.set), _progress() as bars:
        tasks = [
            bars.add_task(inert("rebuild " + ", ".join(group)), total=head) for group in groups
        ]
        try:
            for child in children:
                child.start()
            while len(outcome) < len(children):
                if not go.is_set() and not abort.is_set():
                    if stopping.is_set() or any(o[0] != "done" for o in outcome.values()):
                        abort.set()
                    elif len(ready) == len(children):
                        go.set()
                try:
                    message = messages.get(timeout=0.2)
                except queue.Empty:
                    for i, child in enumerate(children):
                        # Its last message may still be in the pipe: wait one more round.
                        if i not in outcome and not child.is_alive():
                            missing[i] = missing.get(i, 0) + 1
                            if missing[i] > 2:
                                outcome[i] = (
                                    "crashed",
                                    f"the rebuild process of {', '.join(groups[i])} ended "
                                    f"unexpectedly (exit code {child.exitcode})",
                                )
                    continue
                kind, i, *rest = message
                if kind == "progress":
                    bars.update(tasks[i], completed=rest[0])
                elif kind == "ready":
                    ready.add(i)
                    bars.update(tasks[i], completed=rest[0])
                else:
                    outcome[i] = (kind, *rest)
        finally:
            if not go.is_set():
                abort.set()
            for child in children:
                child.join(timeout=60)
                if child.is_alive():
                    child.terminate()
                    child.join()
    _report_parallel(groups, outcome, stopping.is_set(), time.monotonic() - started, json_out)


def _report_parallel(
    groups: list[tuple[str, ...]],
    outcome: dict[int, tuple[Any, ...]],
    interrupted: bool,
    seconds: float,
    json_out: bool,
) -> None:
    swapped = [i for i, o in outcome.items() if o[0] == "done" and o[1] >= 0]
    errors = [str(o[1]) for o in outcome.values() if o[0] != "done"]
    if errors:
        if swapped:  # one process failed while swapping in, after all were built
            done = ", ".join(n for i in sorted(swapped) for n in groups[i])
            tail = f"{done} swapped in, the other live views are unchanged"
        else:
            tail = "the live views are unchanged"
        error(f"error: {errors[0]}; {tail}")
        damaged = any(o[0] == "damaged" for o in outcome.values())
        raise typer.Exit(EXIT_DAMAGED if damaged else EXIT_FAILED)
    if len(swapped) < len(groups):
        error("rebuild interrupted; the live views are unchanged")
        raise typer.Exit(EXIT_INTERRUPTED if interrupted else EXIT_FAILED)
    position = int(outcome[0][1])
    built = {name: float(outcome[i][2]) for i, group in enumerate(groups) for name in group}
    names = [name for group in groups for name in group]
    _report_rebuild(names, len(groups), position, seconds, built, json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(project_app, name="project")
