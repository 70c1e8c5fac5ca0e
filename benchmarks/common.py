"""Helpers shared by the benchmarks: fresh stores, timing, tables, machine info, results.

- ``fresh_store(backend)``: a store nobody else uses (SQLite in a temporary directory,
  or a new PostgreSQL schema dropped afterwards), with settings built like production's.
- ``interleave(cases, repeat)`` runs the cases a, b, a, b, ...; ``interleave_chunks`` takes
  turns in smaller chunks: a load spike from other processes then hits every case alike.
  Report medians, and ratios of cases measured in the same round.
- ``print_table`` prints a Markdown table (pasteable into docs/benchmarks.md).
- ``save_results`` (or ``results_path`` + ``write_results``, to rewrite as a run goes):
  JSON in benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import re
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from eventsourcing.application import Application

from domain.context import Clock
from domain.ledger import Ledger
from secstate.bootstrap import build_ledger, ensure_postgres_schema, store_env
from secstate.keyring import create_ring_file
from secstate.settings import Settings

POSTGRES_URL = os.environ.get(
    "SECSTATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKENDS = ("sqlite", "postgres")

# Cheap argon2 for stores whose benchmark does not hash: preparing users stays fast.
CHEAP_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 8,
    "argon2_parallelism": 1,
}

App = TypeVar("App", bound=Application[Any])


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- stores ---------------------------------------------------------------------------------


@dataclass
class Store:
    """One isolated store; apps opened through it are closed when it is left."""

    backend: str
    home: Path
    schema: str | None
    settings: Settings
    _apps: list[Application[Any]] = field(default_factory=list)

    def ledger(self, clock: Clock | None = None) -> Ledger:
        app = build_ledger(self.settings, clock=clock)
        self._apps.append(app)
        return app

    def env(self, sqlite_file: str) -> dict[str, str]:
        """Exactly the persistence settings the ledger gets (own SQLite file)."""
        return store_env(self.settings, sqlite_file)

    def app(self, cls: type[App], sqlite_file: str) -> App:
        app = cls(self.env(sqlite_file))
        self._apps.append(app)
        return app

    def close(self) -> None:
        while self._apps:
            self._apps.pop().close()


def _pg_connect() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)


@contextmanager
def fresh_store(backend: str, **settings: Any) -> Iterator[Store]:
    """A new SQLite directory or PostgreSQL schema, removed (schema dropped) afterwards."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    with tempfile.TemporaryDirectory(prefix="secstate-bench-") as tmp:
        home = Path(tmp) / "home"
        schema = None
        values: dict[str, Any] = {"home": home, **CHEAP_ARGON2, **settings}
        if backend == "postgres":
            schema = "bench_" + secrets.token_hex(5)
            values["database_url"] = f"{POSTGRES_URL}?schema={schema}"
        store = Store(backend, home, schema, Settings(**values))
        try:
            if schema is not None:
                ensure_postgres_schema(store.settings)
                create_ring_file(store.settings)  # a PostgreSQL store gets no ring by itself
            yield store
        finally:
            store.close()
            if schema is not None:
                with _pg_connect() as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_problem() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        with _pg_connect() as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {e}"
    return None


# --- timing ---------------------------------------------------------------------------------


def interleave(
    cases: dict[str, Callable[[int], float]],
    repeat: int,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Call each case once per round, in turn (a, b, a, b, ...); each returns its figure.

    The case gets the round number so it can pick fresh inputs.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_no in range(repeat):
        for name, case in cases.items():
            samples[name].append(case(round_no))
        if on_round:
            on_round(round_no)
    return samples


@dataclass
class Samples:
    """Per case, one figure per round: items per wall-clock second, CPU us per item.

    CPU time (this process) barely moves when other processes load the machine, while
    wall time does: the CPU figures show the overhead of one case over another even when
    the rates are noisy.
    """

    rates: dict[str, list[float]]
    cpu_us: dict[str, list[float]]


def interleave_chunks(
    cases: dict[str, Callable[[int, int, int], object]],
    repeat: int,
    items: int,
    chunk: int,
    on_round: Callable[[int], None] | None = None,
) -> Samples:
    """The cases take turns chunk by chunk, ``repeat`` rounds of ``items`` each.

    ``case(round_no, start, stop)`` handles items [start, stop); it is timed here, so it
    should do nothing else. Finer turns than whole rounds pair the cases under the same
    background load; the order of the cases rotates so none always goes first.
    """
    names = list(cases)
    samples = Samples({name: [] for name in names}, {name: [] for name in names})
    for round_no in range(repeat):
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        for turn, start in enumerate(range(0, items, chunk)):
            stop = min(items, start + chunk)
            for k in range(len(names)):
                name = names[(turn + k) % len(names)]
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                cases[name](round_no, start, stop)
                wall[name] += time.perf_counter() - wall_start
                cpu[name] += time.process_time() - cpu_start
        for name in names:
            samples.rates[name].append(items / wall[name])
            samples.cpu_us[name].append(cpu[name] / items * 1e6)
        if on_round:
            on_round(round_no)
    return samples


class StepTimer:
    """Wall and CPU time summed per named step, for a step-by-step breakdown of a path."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall_start
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu_start

    def per_item(self, items: int) -> dict[str, dict[str, float]]:
        """Microseconds per item, wall and CPU, per step, in the order first seen."""
        return {
            name: {"wall_us": self.wall[name] / items * 1e6, "cpu_us": self.cpu[name] / items * 1e6}
            for name in self.wall
        }


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "samples": list(self.samples),
        }


def paired_ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    """Per-round ratios of two interleaved cases (same round, similar load)."""
    return [t / b for t, b in zip(top, bottom, strict=True)]


@contextmanager
def profiled(path: Path | None, top: int = 30) -> Iterator[None]:
    """cProfile the block; print the top functions by own and cumulative time to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(path))
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
            print(out.getvalue(), file=sys.stderr)


# --- output ---------------------------------------------------------------------------------


def fmt_num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table; first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    print(f"\n{title}\n")
    print(line(cells[0]))
    print(rule + "|")
    for row in cells[1:]:
        print(line(row))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def postgres_version() -> str | None:
    try:
        with _pg_connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except Exception:
        return None
    return str(row[0]) if row else None


def machine_info(with_postgres: bool) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "eventsourcing": _version("eventsourcing"),
        "pydantic": _version("pydantic"),
        "psycopg": f"{_version('psycopg')} ({_psycopg_impl()})",
        "argon2-cffi": _version("argon2-cffi"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version() if with_postgres else None,
        "tmpdir": tempfile.gettempdir(),
    }


def _psycopg_impl() -> str:
    """'binary', 'c' or 'python': the pure-Python one is several times slower."""
    try:
        import psycopg
    except ImportError:
        return "not installed"
    return str(psycopg.pq.__impl__)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def print_machine_info(info: dict[str, Any]) -> None:
    print_table("Machine", ["item", "value"], [[k, v] for k, v in info.items()])


def results_path(name: str) -> Path:
    """A new file in benchmarks/results/ named after the benchmark and the UTC time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"{name}-{stamp}.json"


def write_results(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def save_results(name: str, data: dict[str, Any]) -> Path:
    """Write the results once, to a new file; returns its path."""
    path = results_path(name)
    write_results(path, data)
    return path
