"""Several real ``secstate`` processes on one empty store at once: nothing fails, nothing is
lost or repeated.

Each worker is a thread that runs the installed console script command after command
(a new process each time). The workers pass a barrier before each command, so every
process starts at the same moment as its rivals: the first use of the store (schema,
tables, views) races, and so does every start-up after it. The commands conflict on
purpose: everyone opens the same account and registers
the same user (one wins, the others are refused), adds allowlist entries to and checks
access against that one account, and logs in as that one user, with readers (``state``,
``timeline``, ``project status``) in between. Afterwards the log must hold exactly the
events of the commands that succeeded, by type and by request id, and the views caught up
must equal a rebuild.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_settings, postgres_problem

from domain.catalogue import event_type_name
from projections.registry import make_view
from secstate.bootstrap import build_ledger, open_view_db

SECSTATE_BIN = Path(sys.executable).with_name("secstate")
if not SECSTATE_BIN.exists():
    SECSTATE_BIN = Path(shutil.which("secstate") or SECSTATE_BIN)

# Per worker: 4 set-up commands, then ROUNDS rounds of 4 commands (one of them a reader).
# Each command is a new process (~1 s of CPU, mostly imports), so the defaults stay small;
# raise them for a longer run, e.g. SECSTATE_TEST_WORKERS=6 SECSTATE_TEST_ROUNDS=8.
WORKERS = int(os.environ.get("SECSTATE_TEST_WORKERS", "4"))
ROUNDS = int(os.environ.get("SECSTATE_TEST_ROUNDS", "3"))
PASSWORD = "Quartz-Lantern-" + secrets.token_hex(4)
KEYS = "k1:" + base64.b64encode(b"k" * 32).decode()  # given, so no process makes a key ring
CHEAP = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
}
READERS = (
    ("state", "shared", "--json"),
    ("timeline", "--account", "shared", "--limit", "5", "--json"),
    ("project", "status", "--json"),
)
REGISTERED = Counter({"User.Registered": 1, "User.PasswordSet": 1, "Account.MemberAdded": 1})


@dataclass(frozen=True)
class Step:
    """One command of a worker: what it runs, and what it leaves in the log if it succeeds."""

    request_id: str
    args: tuple[str, ...]
    events: Counter[str]
    stdin: str = ""
    may_be_refused: str | None = None  # the refusal a loser of a race gets (exit 1)


@dataclass(frozen=True)
class Outcome:
    step: Step
    code: int
    err: str


def plan(worker: int) -> list[Step]:
    w = f"w{worker}"
    opened = Counter({"Account.Opened": 1})
    steps = [
        Step(f"{w}-open-shared", ("account", "open", "shared"), opened, may_be_refused="exists"),
        Step(f"{w}-open-own", ("account", "open", f"own-{worker}"), opened),
        Step(
            f"{w}-register-alice",
            ("user", "register", "shared", "alice", "--email", "a@x.example", "--password-stdin"),
            REGISTERED,
            stdin=PASSWORD + "\n",
            may_be_refused="taken",
        ),
        Step(
            f"{w}-register-own",
            (
                *("user", "register", "shared", f"user-{worker}"),
                *("--email", f"u{worker}@x.example", "--password-stdin"),
            ),
            REGISTERED,
            stdin=PASSWORD + "\n",
        ),
    ]
    for k in range(ROUNDS):
        cidr = f"10.{worker}.{k}.0/24"
        steps += [
            Step(
                f"{w}-allow-{k}",
                ("allowlist", "add", "shared", cidr, "--label", f"{w} round {k}"),
                Counter({"Account.AllowlistEntryAdded": 1}),
            ),
            Step(
                f"{w}-check-{k}",
                ("access", "check", "shared", f"10.{worker}.{k}.9"),
                Counter({"Account.ControlPanelAccessAllowed": 1}),
            ),
            Step(
                f"{w}-login-{k}",
                ("user", "login", "alice", "--password-stdin"),
                Counter({"User.LoginSucceeded": 1}),
                stdin=PASSWORD + "\n",
            ),
            Step(f"{w}-read-{k}", READERS[(worker + k) % len(READERS)], Counter()),
        ]
    return steps


def run_worker(worker: int, env: dict[str, str], start: threading.Barrier) -> list[Outcome]:
    outcomes = []
    for step in plan(worker):
        start.wait()  # every step starts in every worker at once: set-up and saves collide
        proc = subprocess.run(
            [str(SECSTATE_BIN), "--request-id", step.request_id, *step.args],
            input=step.stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        outcomes.append(Outcome(step, proc.returncode, proc.stderr))
    return outcomes


def run_all(env: dict[str, str]) -> list[Outcome]:
    start = threading.Barrier(WORKERS)
    results: dict[int, list[Outcome]] = {}
    errors: list[BaseException] = []

    def target(worker: int) -> None:
        try:
            results[worker] = run_worker(worker, env, start)
        except BaseException as e:  # a timeout, say: reported by the test, not lost
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=target, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [outcome for w in range(WORKERS) for outcome in results[w]]


@pytest.fixture
def fresh_store(backend: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """Environment and settings of a store nobody has used: a SQLite home that does not
    exist yet, or a PostgreSQL schema that does not exist yet (dropped afterwards)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(CHEAP, SECSTATE_HOME=str(home), SECSTATE_KEYS=KEYS, COLUMNS="200")
    # In lockstep each saver of the shared account loses at most once to each rival.
    env["SECSTATE_MAX_RETRIES"] = str(max(5, WORKERS))
    schema = None
    if backend == "postgres":
        problem = postgres_problem()
        if problem:
            pytest.skip(problem)
        schema = "c_" + secrets.token_hex(6)
        env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    settings = make_settings(backend, home, schema, keys=KEYS)
    try:
        yield env, settings
    finally:
        if schema is not None:
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def logged_events(settings: Any) -> Counter[tuple[str, str]]:
    """(request id, event type) of every event in the log."""
    ledger = build_ledger(settings)
    try:
        found: Counter[tuple[str, str]] = Counter()
        position = 0
        while True:
            batch = ledger.recorder.select_notifications(start=position + 1, limit=500)
            if not batch:
                return found
            for notification in batch:
                event = ledger.mapper.to_domain_event(notification)
                found[(event.request_id, event_type_name(event))] += 1
            position = batch[-1].id
    finally:
        ledger.close()


def view_rows(settings: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the state and timeline views, in a stable order."""
    rows = {}
    for name in ("state", "timeline"):
        db = open_view_db(settings, name)
        try:
            with db.reading() as tx:
                for table in make_view(name).tables:
                    found = tx.query_all(f"SELECT * FROM {table}")  # noqa: S608 - the view's names
                    rows[table] = sorted(tuple(str(v) for v in row) for row in found)
        finally:
            db.close()
    return rows


def script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECSTATE_BIN), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_concurrent_processes_on_an_empty_store_lose_and_repeat_nothing(
    fresh_store: tuple[dict[str, str], Any],
) -> None:
    env, settings = fresh_store
    # given: an empty store, and WORKERS workers released at the same moment
    # when: each runs its commands, all conflicting on one account and one user
    outcomes = run_all(env)

    # then: nothing failed, apart from the refusals a lost race must give
    unexpected = []
    for o in outcomes:
        refused_as_expected = (
            o.code == 1
            and o.step.may_be_refused is not None
            and o.step.may_be_refused in o.err
            and len(o.err.strip().splitlines()) == 1
        )
        if (o.code != 0 and not refused_as_expected) or "Traceback" in o.err:
            unexpected.append(f"{o.step.request_id} exit {o.code}: {o.err.strip()}")
    assert unexpected == []
    for race in ("open-shared", "register-alice"):
        winners = [o for o in outcomes if o.step.request_id.endswith(race) and o.code == 0]
        assert len(winners) == 1, f"{race}: {len(winners)} processes won"

    # and: the log holds exactly the events of the commands that succeeded
    expected: Counter[tuple[str, str]] = Counter()
    for o in outcomes:
        if o.code == 0:
            for event_type, count in o.step.events.items():
                expected[(o.step.request_id, event_type)] += count
    found = logged_events(settings)
    assert found == expected
    by_type: Counter[str] = Counter()
    for (_, event_type), count in found.items():
        by_type[event_type] += count
    assert by_type == Counter(
        {
            "Account.Opened": 1 + WORKERS,
            "User.Registered": 1 + WORKERS,
            "User.PasswordSet": 1 + WORKERS,
            "Account.MemberAdded": 1 + WORKERS,
            "Account.AllowlistEntryAdded": WORKERS * ROUNDS,
            "Account.ControlPanelAccessAllowed": WORKERS * ROUNDS,
            "User.LoginSucceeded": WORKERS * ROUNDS,
        }
    )

    # and: the views, caught up, equal a rebuild from the log
    caught_up = script(env, "project", "run", "--once")
    assert caught_up.returncode == 0, caught_up.stderr
    live = view_rows(settings)
    assert len(live["timeline"]) == sum(found.values())
    rebuilt = script(env, "project", "rebuild", "state", "timeline", "--jobs", "1")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert view_rows(settings) == live
