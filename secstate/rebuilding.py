"""Rebuilding views beside the live ones: in this process from one shared scan of the
log, or in several processes at once, all swapped in only once every one is built.

Each child process opens its own reader (no keys) and view databases, builds its views'
shadows up to the same log position, says it is ready, and swaps in only when the
parent says go: if any child fails, crashes or is interrupted first, none swaps in.
What the caller shows (progress bars, messages) goes through callbacks.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.errors import DamagedHistoryError
from domain.reader import LedgerReader
from projections.errors import ProjectionFailedError
from projections.rebuild import rebuild_together
from secstate.bootstrap import build_reader
from secstate.followers import OpenedFollower, open_follower
from secstate.settings import Settings

GroupProgress = Callable[[int, int], None]  # (group index, position reached)


@dataclass(frozen=True)
class RebuildOutcome:
    """How a rebuild ended: every group swapped in at ``position``, or why not."""

    groups: list[tuple[str, ...]]
    seconds: float
    position: int = -1
    built: dict[str, float] = field(default_factory=dict)  # view -> seconds to its swap
    swapped: list[str] = field(default_factory=list)
    error: str | None = None
    damaged: bool = False
    interrupted: bool = False

    @property
    def names(self) -> list[str]:
        return [name for group in self.groups for name in group]

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.swapped) == len(self.names)


def rebuild_here(
    settings: Settings,
    reader: LedgerReader,
    names: list[str],
    batch_size: int,
    progress: Callable[[int, int], None],
    stopping: threading.Event,
) -> RebuildOutcome:
    """Every view in ``names`` rebuilt in this process from one scan of the log."""
    started = time.monotonic()
    opened: list[OpenedFollower] = []
    try:
        for name in names:
            opened.append(open_follower(settings, reader, name, batch_size))
        try:
            position = rebuild_together([o.follower for o in opened], progress, stopping=stopping)
        except ProjectionFailedError as e:
            return RebuildOutcome(
                [tuple(names)],
                time.monotonic() - started,
                error=str(e),
                damaged=isinstance(e.cause, DamagedHistoryError),
            )
    finally:
        for o in opened:
            o.close()
    seconds = time.monotonic() - started
    if position < 0:
        return RebuildOutcome([tuple(names)], seconds, interrupted=True)
    return RebuildOutcome(
        [tuple(names)], seconds, position, dict.fromkeys(names, seconds), list(names)
    )


# --- in several processes ------------------------------------------------------------------


@dataclass(frozen=True)
class _RebuildJob:
    """What one child process rebuilds (it opens its own reader and view databases)."""

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
    or -1 if not swapped, build seconds), ("failed"/"damaged", message) or ("crashed",
    message).
    """
    # Ctrl-C reaches the whole process group: the parent alone decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = _ChildStop(abort, job.parent_pid)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.terminated.set())
    reader: LedgerReader | None = None
    opened: list[OpenedFollower] = []
    try:
        # Two processes creating the same PostgreSQL tables at once can fail with "tuple
        # concurrently updated": open one at a time.
        with opening:
            reader = build_reader(job.settings)
            for name in job.names:
                opened.append(open_follower(job.settings, reader, name, job.batch_size))
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
            [o.follower for o in opened],
            progress,
            stop,
            stop_at=job.stop_at,
            before_swap=before_swap,
        )
        messages.put(("done", job.index, position, built))
    except ProjectionFailedError as e:
        damaged = isinstance(e.cause, DamagedHistoryError)
        messages.put(("damaged" if damaged else "failed", job.index, str(e)))
    except BaseException as e:  # the parent reports it; this process only ends
        messages.put(("crashed", job.index, f"{type(e).__name__}: {e}"))
    finally:
        for o in opened:
            o.close()
        if reader is not None:
            reader.close()


def rebuild_in_processes(
    settings: Settings,
    names: list[str],
    jobs: int,
    batch_size: int,
    head: int,
    progress: GroupProgress,
    stopping: threading.Event,
) -> RebuildOutcome:
    """Each of ``jobs`` groups of views rebuilt by its own process (its own scan and
    decode of the log, its own GIL), all up to ``head``, swapped in only once all are
    built. ``progress(group, position)``; ``stopping`` aborts every group."""
    groups = [tuple(names[i::jobs]) for i in range(jobs)]
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # no copy of this process's connections
    opening, messages, go, abort = context.Lock(), context.Queue(), context.Event(), context.Event()
    children = [
        context.Process(
            target=_rebuild_child,
            args=(
                _RebuildJob(i, group, settings, batch_size, head, os.getpid()),
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
    ready: set[int] = set()
    outcome: dict[int, tuple[Any, ...]] = {}
    missing: dict[int, int] = {}
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
                progress(i, int(rest[0]))
            elif kind == "ready":
                ready.add(i)
                progress(i, int(rest[0]))
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
    return _outcome(groups, outcome, stopping.is_set(), time.monotonic() - started)


def _outcome(
    groups: list[tuple[str, ...]],
    outcome: dict[int, tuple[Any, ...]],
    interrupted: bool,
    seconds: float,
) -> RebuildOutcome:
    swapped = [i for i, o in sorted(outcome.items()) if o[0] == "done" and o[1] >= 0]
    swapped_names = [n for i in swapped for n in groups[i]]
    errors = [str(o[1]) for o in outcome.values() if o[0] != "done"]  # the first to fail
    if errors:
        damaged = any(o[0] == "damaged" for o in outcome.values())
        return RebuildOutcome(
            groups, seconds, swapped=swapped_names, error=errors[0], damaged=damaged
        )
    if len(swapped) < len(groups):
        return RebuildOutcome(groups, seconds, swapped=swapped_names, interrupted=interrupted)
    built = {name: float(outcome[i][2]) for i, group in enumerate(groups) for name in group}
    return RebuildOutcome(groups, seconds, int(outcome[0][1]), built, swapped_names)
