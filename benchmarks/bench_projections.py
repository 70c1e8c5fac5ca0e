"""Issue 3: the state and timeline views over a log of a million events or more.

    python -m benchmarks.bench_projections [--backend sqlite|postgres|all] [--accounts N]
        [--seed S] [--store-dir DIR] [--regenerate] [--pg-load copy|demo] [--repeat R]
        [--batch-size B] [--queries Q] [--at-queries A] [--only rebuild|queries|at]
        [--cases bare,fast,sequential,threads,processes,together,cli]
        [--profile] [--prepare-only] [--demo-rate N]

The store: ``secstate demo`` (``secstate.demo.run_demo``) with N customer accounts, plus
one busy account (``bench-busy``) whose four users have 10,000 events in total, logins
spread over 2015. The SQLite store is cached in
``benchmarks/results/stores/demo-a{N}-s{seed}/`` and the PostgreSQL one in schema
``bench_demo_a{N}_s{seed}``; both are kept between runs and made again only with
``--regenerate``. PostgreSQL is filled by default by COPYing the SQLite store's rows
(events with their notification ids, and snapshots) into the ledger's tables
(``--pg-load copy``): the very same log on both backends; ``--pg-load demo`` replays
the demo into PostgreSQL instead. ``--demo-rate N`` only times the demo generator.

(a) rebuild, in events of the log per second (wall clock, and per CPU second of this
    process): ``projections.rebuild.rebuild`` of the state and the timeline views one after the
    other; both in two threads at once (as the runner follows them); both in two
    processes (two ``secstate project rebuild`` side by side); both from one shared scan
    (``rebuild_together``, what ``secstate project rebuild state timeline --jobs 1``
    runs); the command itself with its default ``--jobs`` (``cli``: one process a view,
    swapped in together; a subprocess, timed by its own JSON "seconds"); next
    to a bare scan and decode of the same log in the same round
    (``recorder.select_notifications`` in batches of the follower's size +
    ``mapper.to_domain_event``) and to the rebuild's own read and decode
    (``LogSource``, in the rebuild's batches). Every rebuild goes through
    ``rebuild_together`` (``rebuild`` too). The cases take turns, in rotating
    order.
(b) timeline queries on the rebuilt view (its indexes ensured first, as the CLI does):
    the first page (50 rows, the CLI's default) of
    ``fetch_page(db, parse_filter(...))`` for filters by account, actor, IPv4 /24, IPv6
    /48, whole customer networks, event type + time window, account + type + window,
    parameters drawn from random rows of the view; p50/p95/max.
(c) ``projections.pointintime.state_at`` of the busy account at random moments of its
    history: p50/p95/max.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import multiprocessing
import os
import queue
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from benchmarks.common import (
    BACKENDS,
    CHEAP_ARGON2,
    POSTGRES_URL,
    RESULTS_DIR,
    Summary,
    fmt_num,
    fresh_store,
    log,
    machine_info,
    paired_ratios,
    postgres_problem,
    print_machine_info,
    print_table,
    profiled,
    save_results,
)
from domain.account import Account
from domain.context import Actor, ActorKind, RequestContext, Stamp
from domain.ledger import Ledger
from domain.user import User
from domain.values import AccountKind, Role
from projections.follower import Follower, view_follower
from projections.pointintime import state_at
from projections.rebuild import REBUILD_BATCHES_PER_COMMIT, rebuild, rebuild_together
from projections.registry import make_view
from projections.source import LogSource
from projections.timeline import TimelineView, ip_to_bytes
from projections.timeline_query import fetch_page, parse_filter
from secstate.bootstrap import build_ledger, ensure_postgres_schema, open_view_db
from secstate.demo import parse_demo_options, run_demo
from secstate.settings import Settings
from store.viewdb import ViewDB

DEFAULT_ACCOUNTS = 17_500  # ~58.5 events an account at seed 2015: just over a million events
DEFAULT_SEED = 2015
STORES_DIR = RESULTS_DIR / "stores"
MARKER = "bench-store.json"
META_TABLE = "bench_store_meta"
VIEWS = ("state", "timeline")
PARTS = ("rebuild", "queries", "at")

BUSY_ACCOUNT = "bench-busy"
BUSY_USERS = 4
BUSY_USER_EVENTS = 10_000  # all events of the busy account's users together
BUSY_FROM = datetime(2015, 1, 5, 8, 0, tzinfo=UTC)
BUSY_UNTIL = datetime(2015, 12, 23, 18, 0, tzinfo=UTC)
BUSY_PASSWORD = "bench-Busy-Password-1234"
BUSY_NET = ipaddress.IPv4Network("198.18.200.0/24")
P_BUSY_TYPO = 0.05
SAVE_EVENTS = 2000  # events per save while building the busy account

PAGE = 50  # rows of a timeline page, the CLI's default
WARMUP = 10


def ms(seconds: float) -> float:
    return seconds * 1000.0


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of at least one sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Throttle:
    """Calls through at most every ``seconds`` (and always the last step)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self.last = 0.0

    def due(self, final: bool = False) -> bool:
        now = time.monotonic()
        if final or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


# --- the store ------------------------------------------------------------------------------


def sqlite_settings(home: Path) -> Settings:
    return Settings(home=home, **CHEAP_ARGON2)


def postgres_settings(home: Path, schema: str) -> Settings:
    # Same home: the key ring file the SQLite store's sealed secrets were made with.
    return Settings(
        home=home, database_url=SecretStr(f"{POSTGRES_URL}?schema={schema}"), **CHEAP_ARGON2
    )


def demo_progress() -> Callable[[str, int, int], None]:
    throttle = Throttle()

    def report(phase: str, done: int, total: int) -> None:
        if throttle.due(final=done == total):
            log(f"demo: {phase} {done}/{total}")

    return report


def generate(settings: Settings, accounts: int, seed: int) -> dict[str, Any]:
    """The demo, then the busy account; returns what was made and how fast."""
    log(
        f"generating the demo with {accounts} accounts (seed {seed}) in {settings.describe_store()}"
    )
    summary = run_demo(settings, parse_demo_options(accounts=accounts, seed=seed), demo_progress())
    log(
        f"demo: {summary.events_total:,} events in {summary.elapsed_seconds:.0f}s "
        f"({summary.events_per_second:,.0f} events/s)"
    )
    started = time.perf_counter()
    ledger = build_ledger(settings)
    try:
        busy = add_busy_account(ledger, seed)
        head = int(ledger.recorder.max_notification_id() or 0)
    finally:
        ledger.close()
    busy["seconds"] = round(time.perf_counter() - started, 1)
    return {
        "accounts": accounts,
        "seed": seed,
        "head": head,
        "demo_events": summary.events_total,
        "demo_users": summary.users,
        "demo_seconds": summary.elapsed_seconds,
        "demo_events_per_second": summary.events_per_second,
        "busy": busy,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def add_busy_account(ledger: Ledger, seed: int) -> dict[str, Any]:
    """One account whose users have ``BUSY_USER_EVENTS`` events, logins spread over 2015.

    Built with the domain methods and saved in batches, so snapshots fall due every 100
    versions exactly as through the ledger's commands.
    """
    rng = random.Random(seed)
    system = Actor(ActorKind.SYSTEM, "bench")

    def stamp(actor: Actor, ip: str, at: datetime) -> Stamp:
        return Stamp(RequestContext(actor, ip, "secstate-bench/1"), at)

    opened = BUSY_FROM - timedelta(days=1)
    account = Account.open(
        BUSY_ACCOUNT, AccountKind.CUSTOMER, "Busy bench account", stamp(system, "10.20.0.7", opened)
    )
    users: list[User] = []
    for k in range(BUSY_USERS):
        username = f"busy-user-{k + 1}"
        at = opened + timedelta(minutes=5 + k)
        role = Role.OWNER if k == 0 else Role.TEAMMATE
        user = User.register(
            account.id, username, f"{username}@busy.example", role, stamp(system, "10.20.0.7", at)
        )
        user.set_password(BUSY_PASSWORD, ledger.hasher, stamp(system, "10.20.0.7", at))
        account.add_member(user.id, username, role.value, stamp(system, "10.20.0.7", at))
        users.append(user)
    account.add_allowlist_entry(str(BUSY_NET), "office", stamp(system, "10.20.0.7", opened))
    ledger.save(account, *users)

    logins = BUSY_USER_EVENTS - sum(u.version for u in users)
    span = (BUSY_UNTIL - BUSY_FROM).total_seconds()
    moments = sorted(BUSY_FROM + timedelta(seconds=rng.uniform(0, span)) for _ in range(logins))
    pending = 0
    made = 0
    for at in moments:
        user = rng.choice(users)
        actor = Actor(ActorKind.USER, user.username)
        ip = str(BUSY_NET.network_address + rng.randrange(1, 255))
        typo = rng.random() < P_BUSY_TYPO and user.failed_logins < ledger.lockout_threshold - 1
        before = user.version
        user.login(
            BUSY_PASSWORD + ("x" if typo else ""),
            totp_code=None,
            recovery_code=None,
            two_factor_required=False,
            lockout_threshold=ledger.lockout_threshold,
            hasher=ledger.hasher,
            keyring=ledger.keyring,
            stamp=stamp(actor, ip, at),
        )
        pending += user.version - before
        made += user.version - before
        if made >= logins:
            break
        if pending >= SAVE_EVENTS:
            ledger.save(*users)
            pending = 0
    ledger.save(*users)
    user_events = sum(u.version for u in users)
    log(f"busy account {BUSY_ACCOUNT}: {BUSY_USERS} users, {user_events:,} user events")
    return {
        "account": BUSY_ACCOUNT,
        "users": [u.username for u in users],
        "user_events": user_events,
        "account_events": account.version,
        "from": BUSY_FROM.isoformat(),
        "until": BUSY_UNTIL.isoformat(),
    }


def prepare_sqlite(home: Path, accounts: int, seed: int, regenerate: bool) -> dict[str, Any]:
    """The cached SQLite store: made once (the marker file says it is complete)."""
    marker = home / MARKER
    if marker.exists() and not regenerate:
        meta: dict[str, Any] = json.loads(marker.read_text())
        log(f"using the cached SQLite store {home} ({meta['head']:,} events)")
        return meta
    if home.exists():
        shutil.rmtree(home)
    meta = generate(sqlite_settings(home), accounts, seed)
    marker.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _pg() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)


def read_pg_meta(schema: str) -> dict[str, Any] | None:
    with _pg() as conn:
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND table_name=%s",
            (schema, META_TABLE),
        ).fetchone()
        if row is None:
            return None
        # The schema name is ours (bench_demo_a<N>_s<seed>), never user input.
        row = conn.execute(f'SELECT meta FROM "{schema}".{META_TABLE}').fetchone()  # noqa: S608
    return json.loads(row[0]) if row else None


def write_pg_meta(schema: str, meta: dict[str, Any]) -> None:
    with _pg() as conn:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{schema}".{META_TABLE} (meta TEXT NOT NULL)')
        conn.execute(f'DELETE FROM "{schema}".{META_TABLE}')  # noqa: S608
        insert = f'INSERT INTO "{schema}".{META_TABLE} (meta) VALUES (%s)'  # noqa: S608
        conn.execute(insert, (json.dumps(meta),))


def prepare_postgres(
    home: Path, schema: str, sqlite_meta: dict[str, Any], regenerate: bool, load: str
) -> dict[str, Any]:
    """The PostgreSQL store in its own schema, kept between runs (a meta row marks it done)."""
    settings = postgres_settings(home, schema)
    meta = None if regenerate else read_pg_meta(schema)
    if meta is not None:
        log(f"using the PostgreSQL store in schema {schema} ({meta['head']:,} events)")
        return meta
    with _pg() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    ensure_postgres_schema(settings)
    if load == "demo":
        meta = generate(settings, sqlite_meta["accounts"], sqlite_meta["seed"])
        meta["load"] = "demo"
    else:
        meta = dict(sqlite_meta)
        meta.update(copy_into_postgres(home / "ledger.sqlite3", settings, schema))
    write_pg_meta(schema, meta)
    return meta


def copy_into_postgres(sqlite_path: Path, settings: Settings, schema: str) -> dict[str, Any]:
    """COPY the SQLite store's events (ids kept) and snapshots into the ledger's tables."""
    ledger = build_ledger(settings)  # creates the tables, types and indexes
    try:
        events_table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
        assert ledger.snapshots is not None
        snapshots_table = ledger.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
    finally:
        ledger.close()
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    started = time.perf_counter()
    throttle = Throttle()
    copied = {"events": 0, "snapshots": 0}
    try:
        with _pg() as conn, conn.transaction(), conn.cursor() as cur:
            plan = (
                (
                    "events",
                    events_table,
                    "notification_id, originator_id, originator_version, topic, state",
                    "SELECT rowid, originator_id, originator_version, topic, state "
                    "FROM stored_events ORDER BY rowid",
                ),
                (
                    "snapshots",
                    snapshots_table,
                    "originator_id, originator_version, topic, state",
                    "SELECT originator_id, originator_version, topic, state FROM stored_snapshots",
                ),
            )
            for label, table, columns, select in plan:
                cur.execute(f'TRUNCATE "{schema}"."{table}"')
                with cur.copy(f'COPY "{schema}"."{table}" ({columns}) FROM STDIN') as copy:
                    for row in source.execute(select):
                        copy.write_row(row)
                        copied[label] += 1
                        if throttle.due():
                            log(f"copy: {copied[label]:,} {label}")
            # The copied ids were explicit: move the sequence past them for later inserts.
            table = f'"{schema}"."{events_table}"'
            highest = f"(SELECT max(notification_id) FROM {table})"  # noqa: S608
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), {highest})",
                (table,),
            )
        with _pg() as conn:
            conn.execute(f'ANALYZE "{schema}"."{events_table}"')
            conn.execute(f'ANALYZE "{schema}"."{snapshots_table}"')
    finally:
        source.close()
    seconds = time.perf_counter() - started
    log(f"copy: {copied['events']:,} events, {copied['snapshots']:,} snapshots in {seconds:.0f}s")
    return {
        "load": "copy",
        "copy_events": copied["events"],
        "copy_snapshots": copied["snapshots"],
        "copy_seconds": round(seconds, 1),
    }


def bench_demo_rate(backends: Sequence[str], accounts: int, seed: int) -> dict[str, Any]:
    """The demo generator's own rate on each backend, into a fresh store dropped after."""
    rates: dict[str, Any] = {}
    for backend in backends:
        with fresh_store(backend) as store:
            summary = run_demo(
                store.settings, parse_demo_options(accounts=accounts, seed=seed), demo_progress()
            )
        rates[backend] = {
            "accounts": accounts,
            "events": summary.events_total,
            "seconds": summary.elapsed_seconds,
            "events_per_second": summary.events_per_second,
        }
        log(f"demo on {backend}: {summary.events_per_second:,.0f} events/s")
    return rates


# --- (a) rebuild ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spent:
    """Wall-clock seconds and this process's CPU seconds (all threads) of one measurement.

    On a loaded machine the wall clock mostly measures the load; CPU seconds do not (but
    leave out the PostgreSQL server's work, which runs in other processes).
    """

    wall: float
    cpu: float

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.wall + other.wall, self.cpu + other.cpu)


class Stopwatch:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def spent(self) -> Spent:
        return Spent(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def bare_scan(ledger: Ledger, batch_size: int) -> tuple[int, Spent]:
    """Read and decode the whole log as a follower does, doing nothing with the events."""
    recorder, mapper = ledger.recorder, ledger.mapper
    count = 0
    start = 1
    watch = Stopwatch()
    while True:
        notifications = recorder.select_notifications(start=start, limit=batch_size)
        if not notifications:
            break
        for notification in notifications:
            mapper.to_domain_event(notification)
        count += len(notifications)
        start = notifications[-1].id + 1
    return count, watch.spent()


def fast_scan(ledger: Ledger, batch_size: int) -> tuple[int, Spent]:
    """Read and decode the whole log as a rebuild does (``LogSource``: raw rows through
    the storage port, a batch held at a time, the cyclic collector off), doing nothing
    with the events."""
    source = LogSource.of(ledger)
    decode = source.decode
    count = 0
    after = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        watch = Stopwatch()
        while True:
            rows = source.rows(after, batch_size)
            if not rows:
                break
            for row in rows:
                decode(row)
            count += len(rows)
            after = rows[-1].position
        return count, watch.spent()
    finally:
        if collecting:
            gc.enable()


@dataclass
class Built:
    name: str
    spent: Spent
    position: int


def rebuild_view(settings: Settings, ledger: Ledger, name: str, batch_size: int) -> Built:
    """One ``rebuild`` (the shadow build and the swap), timed without the opening."""
    db = open_view_db(settings, name)
    try:
        follower = view_follower(ledger, make_view(name), db, batch_size)
        throttle = Throttle(15.0)

        def progress(done: int, total: int) -> None:
            if throttle.due(final=done >= total):
                log(f"rebuild {name}: {done:,}/{total:,}")

        watch = Stopwatch()
        position = rebuild(follower, progress)
        return Built(name, watch.spent(), position)
    finally:
        db.close()


def rebuild_both_threads(settings: Settings, ledger: Ledger, batch_size: int) -> Spent:
    """Both views rebuilt at once, one thread each (as the runner runs followers)."""
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            rebuild_view(settings, ledger, name, batch_size)
        except BaseException as e:  # reported below, in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(name,)) for name in VIEWS]
    watch = Stopwatch()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return watch.spent()


def _rebuild_in_child(
    settings_json: str, name: str, batch_size: int, opening: Any, ready: Any, go: Any, out: Any
) -> None:
    """A child process's work: its own ledger and view connection, then one rebuild.

    Opening is serialised (``opening`` lock): two processes creating the same PostgreSQL
    tables at once can fail with "tuple concurrently updated". The rebuild starts when
    the parent says ``go``; its CPU seconds go back through ``out``.
    """
    settings = Settings.model_validate_json(settings_json)
    with opening:
        ledger = build_ledger(settings)
        db = open_view_db(settings, name)
        follower = view_follower(ledger, make_view(name), db, batch_size)
    try:
        ready.set()
        go.wait()
        cpu = time.process_time()
        rebuild(follower)
        out.put(time.process_time() - cpu)
    finally:
        db.close()
        ledger.close()


def rebuild_both_processes(settings: Settings, batch_size: int) -> Spent:
    """Both views rebuilt at once, one process each (two ``secstate project rebuild``
    run side by side): no shared GIL. The clock starts once both have opened their
    stores; CPU time is the children's, for their rebuilds only."""
    context = multiprocessing.get_context("spawn")
    # The settings carry a database URL; children get it through the pipe, not argv.
    settings_json = json.dumps(
        {
            **settings.model_dump(mode="json"),
            "database_url": settings.database_url.get_secret_value()
            if settings.database_url
            else None,
        }
    )
    opening, go, out = context.Lock(), context.Event(), context.Queue()
    readies = [context.Event() for _ in VIEWS]
    children = [
        context.Process(
            target=_rebuild_in_child,
            args=(settings_json, name, batch_size, opening, ready, go, out),
        )
        for name, ready in zip(VIEWS, readies, strict=True)
    ]
    for child in children:
        child.start()
    try:
        for ready, child in zip(readies, children, strict=True):
            while not ready.wait(1.0):
                if not child.is_alive():
                    raise RuntimeError(f"a rebuild process failed (exit code {child.exitcode})")
        watch = Stopwatch()
        go.set()
        cpu = 0.0
        for _ in children:
            while True:
                try:
                    cpu += out.get(timeout=5.0)
                    break
                except queue.Empty:
                    dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"a rebuild process failed (exit codes {dead})"
                        ) from None
        wall = watch.spent().wall
    finally:
        go.set()
        for child in children:
            child.join()
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise RuntimeError(f"a rebuild process failed (exit codes {failed})")
    return Spent(wall, cpu)


def rebuild_both_together(settings: Settings, ledger: Ledger, batch_size: int) -> Spent:
    """``projections.base.rebuild_together``: one scan and decode of the log feeding both
    views (what ``secstate project rebuild state timeline`` runs)."""
    followers: list[Follower] = []
    try:
        for name in VIEWS:
            db = open_view_db(settings, name)
            try:
                followers.append(view_follower(ledger, make_view(name), db, batch_size))
            except BaseException:
                db.close()
                raise
        throttle = Throttle(15.0)

        def progress(done: int, total: int) -> None:
            if throttle.due(final=done >= total):
                log(f"rebuild together: {done:,}/{total:,}")

        watch = Stopwatch()
        rebuild_together(followers, progress)
        return watch.spent()
    finally:
        for follower in followers:
            follower.sink.db.close()  # type: ignore[attr-defined]  # a view's sink


def rebuild_cli(settings: Settings, batch_size: int) -> Spent:
    """``secstate project rebuild state timeline`` as run by hand: its default ``--jobs``
    (one process a view on this machine's CPUs, each with its own scan of the log, all
    swapped in once both are built). Wall: the command's own "seconds" (from taking the
    lock to the last swap, child processes started included, the interpreter's start
    not); CPU: the command and its children, interpreter starts included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env["SECSTATE_HOME"] = str(settings.home)
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    command = [
        sys.executable,
        "-c",
        "import sys; from secstate.cli import run; sys.exit(run(sys.argv[1:]))",
        "project",
        "rebuild",
        *VIEWS,
        "--json",
        "--batch-size",
        str(batch_size),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"secstate project rebuild failed ({done.returncode}): {done.stderr}")
    figures = json.loads(done.stdout)
    log(f"cli: jobs {figures['jobs']}, per view {figures['per_view']}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Spent(float(figures["seconds"]), cpu)


REBUILD_CASES = (
    "bare",
    "fast",
    "state",
    "timeline",
    "sequential",
    "threads",
    "processes",
    "together",
    "cli",
)


def bench_rebuild(
    settings: Settings,
    ledger: Ledger,
    repeat: int,
    batch_size: int,
    profile: Path | None,
    only_cases: Sequence[str] = REBUILD_CASES,
) -> dict[str, Any]:
    """Events/s by the wall clock and per CPU second, per case and round."""
    wall: dict[str, list[float]] = {name: [] for name in REBUILD_CASES}
    cpu: dict[str, list[float]] = {name: [] for name in REBUILD_CASES}
    events = 0

    def record(case: str, count: int, spent: Spent) -> None:
        wall[case].append(count / spent.wall)
        cpu[case].append(count / spent.cpu)
        log(f"{case}: {count:,} events in {spent.wall:.1f}s ({spent.cpu:.1f} CPU s)")

    def run_bare() -> None:
        nonlocal events
        events, spent = bare_scan(ledger, batch_size)
        record("bare", events, spent)

    def run_fast() -> None:
        count, spent = fast_scan(ledger, batch_size * REBUILD_BATCHES_PER_COMMIT)
        record("fast", count, spent)

    def run_sequential() -> None:
        total = Spent(0.0, 0.0)
        for name in VIEWS:
            built = rebuild_view(settings, ledger, name, batch_size)
            record(name, built.position, built.spent)
            total += built.spent
        record("sequential", head, total)

    def run_threads() -> None:
        record("threads", head, rebuild_both_threads(settings, ledger, batch_size))

    def run_processes() -> None:
        record("processes", head, rebuild_both_processes(settings, batch_size))

    def run_together() -> None:
        record("together", head, rebuild_both_together(settings, ledger, batch_size))

    def run_cli() -> None:
        record("cli", head, rebuild_cli(settings, batch_size))

    head = int(ledger.recorder.max_notification_id() or 0)
    runners: dict[str, Callable[[], None]] = {
        "bare": run_bare,
        "fast": run_fast,
        "sequential": run_sequential,  # also records "state" and "timeline"
        "threads": run_threads,
        "processes": run_processes,
        "together": run_together,
        "cli": run_cli,
    }
    cases = [run for name, run in runners.items() if name in only_cases]
    for round_no in range(repeat):
        log(f"rebuild round {round_no + 1}/{repeat}")
        for k in range(len(cases)):
            cases[(round_no + k) % len(cases)]()
    result: dict[str, Any] = {"events": events, "head": head, "batch_size": batch_size}
    for clock, samples in (("wall", wall), ("cpu", cpu)):
        result[clock] = {
            name: Summary.of(values).as_dict() for name, values in samples.items() if values
        }
        pairs = [(case, "bare") for case in ("sequential", "threads", "processes", "together")]
        pairs += [("together", "fast"), ("cli", "together")]
        for top, bottom in pairs:
            if samples[top] and samples[bottom]:
                result[clock][f"ratio_{top}_to_{bottom}"] = Summary.of(
                    paired_ratios(samples[top], samples[bottom])
                ).as_dict()
    if profile is not None:
        for name in VIEWS:
            log(f"profiling one rebuild of {name}")
            with profiled(profile / f"projections-{settings_backend(settings)}-{name}.prof"):
                rebuild_view(settings, ledger, name, batch_size)
        log("profiling one bare scan")
        with profiled(profile / f"projections-{settings_backend(settings)}-bare.prof"):
            bare_scan(ledger, batch_size)
    return result


def settings_backend(settings: Settings) -> str:
    return "postgres" if settings.uses_postgres else "sqlite"


def ensure_views(settings: Settings, ledger: Ledger, batch_size: int) -> None:
    """Views caught up with the log (untimed), for the query parts run without a rebuild."""
    for name in VIEWS:
        db = open_view_db(settings, name)
        try:
            follower = view_follower(ledger, make_view(name), db, batch_size)
            behind = follower.head() - follower.position()
            if behind:
                log(f"catching {name} up by {behind:,} events (untimed)")
                follower.catch_up()
        finally:
            db.close()


# --- (b) timeline queries ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueryCase:
    label: str
    filters: list[dict[str, Any]]


def sample_rows(
    db: ViewDB, count: int, rng: random.Random, where: str = "1=1", params: Sequence[Any] = ()
) -> list[Any]:
    """``count`` random timeline rows (by random positions), for realistic parameters.

    ``where`` is one of this module's constant conditions, never outside input.
    """
    bounds = f"SELECT min(position), max(position) FROM timeline WHERE {where}"  # noqa: S608
    with db.reading() as tx:
        low, high = tx.query_one(bounds, params)
    columns = "account, actor_kind, actor_id, source_ip, event_type, occurred_us"
    select = f"SELECT {columns} FROM timeline WHERE position >= ? AND {where}"  # noqa: S608
    select += " ORDER BY position LIMIT 1"
    rows: list[Any] = []
    attempts = 0
    while len(rows) < count and attempts < count * 50:
        attempts += 1
        position = rng.randint(int(low), int(high))
        with db.reading() as tx:
            row = tx.query_one(select, (position, *params))
        if row is not None:
            rows.append(row)
    return rows


def query_cases(db: ViewDB, count: int, rng: random.Random) -> list[QueryCase]:
    with db.reading() as tx:
        names = [
            r[0] for r in tx.query_all("SELECT name FROM timeline_ids WHERE kind = ?", ("account",))
        ]
        first_us, last_us = tx.query_one("SELECT min(occurred_us), max(occurred_us) FROM timeline")
    rows = sample_rows(db, count, rng)
    v4_all = ipaddress.IPv4Network("0.0.0.0/0")
    v4_range = (ip_to_bytes(str(v4_all[0])), ip_to_bytes(str(v4_all[-1])))
    v4 = sample_rows(db, count, rng, "ip_bytes BETWEEN ? AND ?", v4_range)
    v6 = sample_rows(db, count, rng, "NOT (ip_bytes BETWEEN ? AND ?)", v4_range)
    # Windows inside the busy weeks of the story (the demo's activity from 2015-01-05).
    activity_us = max(first_us, int(datetime(2015, 1, 5, tzinfo=UTC).timestamp() * 1_000_000))
    hour_us = 3_600 * 1_000_000

    def window(row: Any, hours: int) -> dict[str, Any]:
        start = rng.randint(activity_us, max(activity_us, last_us - hours * hour_us))
        since = datetime.fromtimestamp(start / 1_000_000, tz=UTC)
        until = since + timedelta(hours=hours)
        return {"types": [row[4]], "since": since, "until": until}

    def net(ip: str, prefix: int) -> str:
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    return [
        QueryCase("account", [{"account": rng.choice(names)} for _ in range(count)]),
        QueryCase("actor", [{"actor": f"{r[1]}:{r[2]}"} for r in rows]),
        QueryCase("IPv4 /24", [{"ip": net(r[3], 24)} for r in v4]),
        QueryCase("IPv6 /48", [{"ip": net(r[3], 48)} for r in v6]),
        QueryCase("IPv4 /15 (all customers)", [{"ip": "198.18.0.0/15"}] * max(1, count // 4)),
        QueryCase("IPv6 /20 (all customers)", [{"ip": "3fff::/20"}] * max(1, count // 4)),
        QueryCase("type + 1 day", [window(r, 24) for r in rows]),
        QueryCase("type + 7 days", [window(r, 24 * 7) for r in rows]),
        QueryCase(
            "account + type + 7 days",
            [{**window(r, 24 * 7), "account": r[0]} for r in rows if r[0] is not None],
        ),
    ]


def latencies(spent: Sequence[Spent]) -> dict[str, float]:
    """Percentiles in ms, by the wall clock and in this process's CPU time."""
    walls = [s.wall for s in spent]
    cpus = [s.cpu for s in spent]
    return {
        "p50_ms": ms(percentile(walls, 50)),
        "p95_ms": ms(percentile(walls, 95)),
        "max_ms": ms(max(walls)),
        "cpu_p50_ms": ms(percentile(cpus, 50)),
        "cpu_p95_ms": ms(percentile(cpus, 95)),
    }


def bench_queries(db: ViewDB, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cases = query_cases(db, count, rng)
    for flt in [f for case in cases for f in case.filters[:2]][:WARMUP]:
        fetch_page(db, parse_filter(limit=PAGE, **flt))
    results = []
    for case in cases:
        spent: list[Spent] = []
        rows: list[int] = []
        for flt in case.filters:
            watch = Stopwatch()
            page = fetch_page(db, parse_filter(limit=PAGE, **flt))
            spent.append(watch.spent())
            rows.append(len(page.entries))
        results.append(
            {
                "filter": case.label,
                "queries": len(spent),
                **latencies(spent),
                "mean_rows": statistics.fmean(rows),
                "example": {k: str(v) for k, v in case.filters[0].items()},
                "slowest": {
                    "ms": ms(max(x.wall for x in spent)),
                    "filter": {
                        k: str(v)
                        for k, v in case.filters[
                            max(range(len(spent)), key=lambda i: spent[i].wall)
                        ].items()
                    },
                },
            }
        )
        log(
            f"query {case.label}: p50 {results[-1]['p50_ms']:.1f} ms, "
            f"p95 {results[-1]['p95_ms']:.1f} ms"
        )
    return results


# --- (c) state --at ---------------------------------------------------------------------------


def bench_state_at(ledger: Ledger, count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    span = (BUSY_UNTIL - BUSY_FROM).total_seconds()
    moments = [BUSY_FROM + timedelta(seconds=rng.uniform(0, span)) for _ in range(count)]
    for at in moments[:WARMUP]:
        state_at(ledger, BUSY_ACCOUNT, at)
    spent: list[Spent] = []
    for at in moments:
        watch = Stopwatch()
        state_at(ledger, BUSY_ACCOUNT, at)
        spent.append(watch.spent())
    return {"account": BUSY_ACCOUNT, "queries": count, **latencies(spent)}


# --- running and reporting --------------------------------------------------------------------


def run_backend(
    backend: str, settings: Settings, args: argparse.Namespace, profile: Path | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    ledger = build_ledger(settings)
    try:
        if "rebuild" in args.only:
            entry["rebuild"] = bench_rebuild(
                settings, ledger, args.repeat, args.batch_size, profile, args.cases
            )
        else:
            ensure_views(settings, ledger, args.batch_size)
        if "queries" in args.only:
            if backend == "postgres":
                with _pg() as conn:  # fresh tables from the rebuild swap have no statistics
                    schema = settings.postgres_params()["POSTGRES_SCHEMA"]
                    for table in ("timeline", "timeline_touch", "timeline_ids"):
                        conn.execute(f'ANALYZE "{schema}".{table}')
            db = open_view_db(settings, "timeline")
            try:
                # As the CLI does before a query: a view made by an earlier version gets
                # today's indexes (and loses the ones no longer used).
                created = TimelineView().ensure_indexes(db)
                if created:
                    log(f"timeline: created indexes {', '.join(created)} (untimed)")
                entry["queries"] = bench_queries(db, args.queries, args.seed)
            finally:
                db.close()
        if "at" in args.only:
            entry["state_at"] = bench_state_at(ledger, args.at_queries, args.seed)
            log(
                f"state --at: p50 {entry['state_at']['p50_ms']:.1f} ms, "
                f"p95 {entry['state_at']['p95_ms']:.1f} ms"
            )
    finally:
        ledger.close()
    return entry


def report(results: dict[str, Any]) -> None:
    stores = results["stores"]
    print_table(
        "Stores",
        ["backend", "events", "made by", "seconds", "events/s"],
        [
            [
                backend,
                fmt_num(meta["head"]),
                meta.get("load", "demo"),
                fmt_num(
                    meta["copy_seconds"] if meta.get("load") == "copy" else meta["demo_seconds"]
                ),
                fmt_num(
                    meta["copy_events"] / meta["copy_seconds"]
                    if meta.get("load") == "copy"
                    else meta["demo_events_per_second"]
                ),
            ]
            for backend, meta in stores.items()
        ],
    )
    backends = results["backends"]
    rebuilt = {b: e["rebuild"] for b, e in backends.items() if "rebuild" in e}
    if rebuilt:
        print_table(
            "(a) Rebuild: events of the log per second, median of the rounds "
            "(wall clock / per CPU second of this process)",
            [
                "backend",
                "bare scan+decode",
                "fast scan+decode (LogSource)",
                "state",
                "timeline",
                "both, one after the other",
                "both, two threads",
                "both, two processes",
                "both, one shared scan (rebuild_together)",
                "both, CLI (project rebuild, default --jobs)",
                "ratio seq/bare",
                "ratio threads/bare",
                "ratio processes/bare",
                "ratio together/bare",
                "ratio together/fast",
                "ratio cli/together",
            ],
            [
                [
                    b,
                    *(
                        f"{fmt_num(r['wall'][case]['median'])} / "
                        f"{fmt_num(r['cpu'][case]['median'])}"
                        if case in r["wall"]
                        else "-"
                        for case in REBUILD_CASES
                    ),
                    *(
                        f"{r['wall'][key]['median']:.2f} / {r['cpu'][key]['median']:.2f}"
                        if key in r["wall"]
                        else "-"
                        for key in (
                            "ratio_sequential_to_bare",
                            "ratio_threads_to_bare",
                            "ratio_processes_to_bare",
                            "ratio_together_to_bare",
                            "ratio_together_to_fast",
                            "ratio_cli_to_together",
                        )
                    ),
                ]
                for b, r in rebuilt.items()
            ],
        )
    queried = {b: e["queries"] for b, e in backends.items() if "queries" in e}
    if queried:
        print_table(
            f"(b) Timeline queries, first page of {PAGE} rows, ms "
            "(wall clock; CPU of this process)",
            ["filter", "backend", "queries", "p50", "p95", "max", "CPU p50", "CPU p95", "rows"],
            [
                [q["filter"], b, q["queries"], *latency_cells(q), f"{q['mean_rows']:.0f}"]
                for b, qs in queried.items()
                for q in qs
            ],
        )
    at = {b: e["state_at"] for b, e in backends.items() if "state_at" in e}
    if at:
        print_table(
            f"(c) state_at of {BUSY_ACCOUNT} ({BUSY_USER_EVENTS:,} user events), ms "
            "(wall clock; CPU of this process)",
            ["backend", "queries", "p50", "p95", "max", "CPU p50", "CPU p95"],
            [[b, a["queries"], *latency_cells(a)] for b, a in at.items()],
        )


def latency_cells(figures: dict[str, Any]) -> list[str]:
    keys = ("p50_ms", "p95_ms", "max_ms", "cpu_p50_ms", "cpu_p95_ms")
    return [f"{figures[k]:.1f}" for k in keys]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_projections",
        description="Issue 3: view rebuilds, timeline queries and state --at at 1M events.",
    )
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument(
        "--accounts",
        type=int,
        default=DEFAULT_ACCOUNTS,
        help=f"demo customer accounts (default {DEFAULT_ACCOUNTS}: ~1.03M events)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=STORES_DIR,
        help="where cached SQLite stores live (default benchmarks/results/stores)",
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="make the stores again (SQLite and PostgreSQL)"
    )
    parser.add_argument(
        "--pg-load",
        choices=("copy", "demo"),
        default="copy",
        help="fill PostgreSQL by COPY of the SQLite store's rows (default) or by the demo",
    )
    parser.add_argument("--repeat", type=int, default=3, help="(a): rounds (default 3)")
    parser.add_argument(
        "--batch-size", type=int, default=2000, help="follower batch (default 2000)"
    )
    parser.add_argument(
        "--queries", type=int, default=200, help="(b): queries per filter (default 200)"
    )
    parser.add_argument(
        "--at-queries", type=int, default=200, help="(c): state_at calls (default 200)"
    )
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part")
    parser.add_argument(
        "--cases",
        default=",".join(c for c in REBUILD_CASES if c not in ("state", "timeline")),
        help="(a): comma-separated rebuild cases to run (default all): bare, fast, "
        "sequential (also state, timeline), threads, processes, together, cli",
    )
    parser.add_argument(
        "--demo-rate",
        type=int,
        metavar="N",
        help="only time the demo generator with N accounts on each backend (fresh stores)",
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="make (or check) the stores and stop"
    )
    parser.add_argument(
        "--profile", action="store_true", help="(a): cProfile one extra rebuild of each view"
    )
    args = parser.parse_args(argv)
    for name in ("accounts", "repeat", "batch_size", "queries", "at_queries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.only = args.only or list(PARTS)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(
        set(args.cases) - set(REBUILD_CASES) | ({"state", "timeline"} & set(args.cases))
    )
    if unknown or not args.cases:
        parser.error(f"--cases: unknown {', '.join(unknown) or '(none given)'}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    if "postgres" in backends:
        problem = postgres_problem()
        if problem:
            print(f"error: {problem} (or use --backend sqlite)", file=sys.stderr)
            return 1
    info = machine_info(with_postgres="postgres" in backends)
    print_machine_info(info)
    started = time.perf_counter()
    if args.demo_rate:
        rates = bench_demo_rate(backends, args.demo_rate, args.seed)
        print_table(
            f"Demo generator, {args.demo_rate:,} accounts, fresh store",
            ["backend", "events", "seconds", "events/s"],
            [
                [b, fmt_num(r["events"]), fmt_num(r["seconds"], 1), fmt_num(r["events_per_second"])]
                for b, r in rates.items()
            ],
        )
        path = save_results("projections-demo", {"machine": info, "demo_rate": rates})
        print(f"\nload average at the end: {[round(x, 2) for x in os.getloadavg()]}")
        print(f"results: {path}")
        return 0
    home = args.store_dir / f"demo-a{args.accounts}-s{args.seed}"
    schema = f"bench_demo_a{args.accounts}_s{args.seed}"
    stores: dict[str, Any] = {}
    settings: dict[str, Settings] = {}
    sqlite_meta = prepare_sqlite(home, args.accounts, args.seed, args.regenerate)
    if "sqlite" in backends:
        stores["sqlite"] = sqlite_meta
        settings["sqlite"] = sqlite_settings(home)
    if "postgres" in backends:
        stores["postgres"] = prepare_postgres(
            home, schema, sqlite_meta, args.regenerate, args.pg_load
        )
        settings["postgres"] = postgres_settings(home, schema)
    results: dict[str, Any] = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "stores": stores,
        "backends": {},
    }
    if not args.prepare_only:
        for backend in backends:
            log(f"--- {backend} ---")
            profile = RESULTS_DIR if args.profile else None
            results["backends"][backend] = run_backend(backend, settings[backend], args, profile)
            save_results(f"projections-{backend}", results)  # kept if a later backend fails
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    report(results)
    print(f"\nload average at the end: {results['machine']['load_average_end']}")
    path = save_results("projections", results)
    print(f"\nresults: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
