"""``secstate project``: run the views' followers, see where they stand, rebuild one."""

from __future__ import annotations

import logging
import os
import threading
from typing import Annotated

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

from projections.registry import make_view, view_names
from secstate.bootstrap import store_config
from secstate.cli.common import STATE, JsonOption, print_json, print_table, say
from secstate.cli.following import (
    BatchSizeOption,
    finish,
    logging_to_stderr,
    status_json,
    stop_on_signals,
)
from secstate.cli.render import err_console, error, inert, text_column
from secstate.followers import check_follower_names, follower_names, follower_report
from secstate.rebuilding import RebuildOutcome, rebuild_here, rebuild_in_processes
from secstate.runner import Runner, RunReport
from store.locks import exclusive

project_app = typer.Typer(
    help="Keep the read views (state, timeline) up to date with the ledger.",
    no_args_is_help=True,
)

EXIT_FAILED = 1
EXIT_DAMAGED = 3  # the store holds a row the ledger cannot trust, as everywhere else
EXIT_INTERRUPTED = 130


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


@project_app.command("run")
def project_run(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Followers to run (default: every view): " + ", ".join(follower_names())
        ),
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
    chosen = check_follower_names(names or [])
    with (
        logging_to_stderr(),
        Runner(
            STATE.settings,
            STATE.reader,
            chosen,
            batch_size=batch_size,
            poll_interval=poll_interval,
        ) as runner,
        stop_on_signals(runner.stop),
    ):
        if once:
            report = _run_once_with_progress(runner)
        else:
            logging.getLogger("secstate.projections").info(
                "following %s (%s)", ", ".join(chosen), STATE.settings.describe_store()
            )
            report = runner.run()
    finish(report, once)


def _run_once_with_progress(runner: Runner) -> RunReport:
    head = STATE.reader.log_store.head()
    with _progress() as bars:
        tasks: dict[str, TaskID] = {
            run.name: bars.add_task(
                inert(run.name), total=max(head, run.position), completed=run.position
            )
            for run in runner.followers
        }

        def progress(name: str, position: int, target: int) -> None:
            bars.update(tasks[name], completed=position, total=target)

        report = runner.run(once=True, progress=progress)
        for run in report.followers:  # a failed view's bar shows where it stopped
            bars.update(tasks[run.name], completed=run.position)
        return report


@project_app.command("status")
def project_status(
    names: Annotated[
        list[str] | None, typer.Argument(help="Followers to show (default: all).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Each follower's position, the log head, the lag and the last error, if any."""
    chosen = check_follower_names(names) if names else follower_names()
    statuses = [follower_report(STATE.settings, STATE.reader, name) for name in chosen]
    if json_out:
        print_json(
            {
                "head": max((s.head for s in statuses), default=0),
                "views": [status_json(s) for s in statuses],
            }
        )
        return
    print_table(
        "projections",
        ["view", "state", "position", "head", "lag", "last error"],
        [
            (
                s.name,
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
    views = [make_view(name).name for name in dict.fromkeys(names)]  # known views only
    processes = min(len(views), jobs if jobs is not None else _usable_cpus())
    with exclusive(store_config(STATE.settings), [f"rebuild-{name}" for name in views]):
        if processes > 1:
            _rebuild_parallel(views, processes, batch_size, json_out)
        else:
            _rebuild(views, batch_size, json_out)


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _rebuild(names: list[str], batch_size: int, json_out: bool) -> None:
    stopping = threading.Event()
    label = ", ".join(names)
    with stop_on_signals(stopping.set), _progress() as bars:
        task = bars.add_task(inert(f"rebuild {label}"), total=STATE.reader.log_store.head())
        outcome = rebuild_here(
            STATE.settings,
            STATE.reader,
            names,
            batch_size,
            lambda done, target: bars.update(task, completed=done, total=target),
            stopping,
        )
        if outcome.complete:
            bars.update(task, completed=outcome.position)
    _finish_rebuild(outcome, json_out)


def _rebuild_parallel(names: list[str], jobs: int, batch_size: int, json_out: bool) -> None:
    """Each group of views rebuilt by its own process, swapped in once all are built."""
    head = STATE.reader.log_store.head()
    groups = [names[i::jobs] for i in range(jobs)]
    stopping = threading.Event()
    with stop_on_signals(stopping.set), _progress() as bars:
        tasks = [
            bars.add_task(inert("rebuild " + ", ".join(group)), total=head) for group in groups
        ]
        outcome = rebuild_in_processes(
            STATE.settings,
            names,
            jobs,
            batch_size,
            head,
            lambda group, position: bars.update(tasks[group], completed=position),
            stopping,
        )
    _finish_rebuild(outcome, json_out)


def _finish_rebuild(outcome: RebuildOutcome, json_out: bool) -> None:
    """Say how the rebuild ended, with the exit code of its kind."""
    if outcome.error is not None:
        if outcome.swapped:  # one process failed while swapping in, after all were built
            tail = f"{', '.join(outcome.swapped)} swapped in, the other live views are unchanged"
        elif len(outcome.names) == 1:
            tail = "the live view is unchanged"
        else:
            tail = "the live views are unchanged"
        error(f"error: {outcome.error}; {tail}")
        raise typer.Exit(EXIT_DAMAGED if outcome.damaged else EXIT_FAILED)
    if not outcome.complete:
        error("rebuild interrupted; the live views are unchanged")
        raise typer.Exit(EXIT_INTERRUPTED if outcome.interrupted else EXIT_FAILED)
    _report_rebuild(
        outcome.names,
        len(outcome.groups),
        outcome.position,
        outcome.seconds,
        outcome.built,
        json_out,
    )


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


def register(app: typer.Typer) -> None:
    app.add_typer(project_app, name="project")
