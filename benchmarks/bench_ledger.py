"""Issue 2: how much does secstate's command path cost over the bare eventsourcing library?

    python -m benchmarks.bench_ledger [--backend sqlite|postgres|all] [--events N]
        [--users M] [--repeat R] [--bulk-repeat B] [--bulk-noise K] [--hash-repeat H]
        [--profile]

(a) ours: ``Ledger.add_allowlist_entry`` through the whole application path: request
    context and pydantic command built per call, then actor check, load, domain, save.
    The actor is the account's owner (a user), as from the control panel.
(b) bare: a plain ``eventsourcing.domain.Aggregate`` with one ``@event`` method whose
    stored event is as large as ours, in a plain ``Application`` on the same store
    settings: ``repository.get`` + method + ``save`` per command.
    Each case has its own N aggregates that start with two events and get one event per
    round, so both sides replay equally long histories and no snapshot falls due (ours
    snapshot every 100 events). The cases take turns in chunks of 50 commands. Also
    measured: ours with the system actor (no actor check), to show what that check costs;
    then one more pass over ours and bare timed step by step.
(c) ``Ledger.require_password_resets`` over M users, by ``everyone=True`` (one scan of
    the log) and by ``accounts=[...]`` (every account named), each run a new campaign;
    next to the bare library doing the same work both ways: scan the log and replay
    every aggregate, or ``repository.get`` each one (on a sample of 2000); then one event
    each, saved 1000 aggregates per ``save``. Ours' runs are also split: the read of the
    log (``ResetCampaign._reset_statuses``) and the rest (targets, building and storing events).
    ``--bulk-noise K`` first adds K events of other aggregates (accounts toggling their
    2FA policy) to the ledger's log: a campaign in a long-lived store.
(d) argon2id cost with the default parameters (t=3, m=64 MiB, p=4): ms per hash/verify.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import (
    BACKENDS,
    RESULTS_DIR,
    StepTimer,
    Store,
    Summary,
    fmt_num,
    fresh_store,
    interleave,
    interleave_chunks,
    log,
    machine_info,
    paired_ratios,
    postgres_problem,
    print_machine_info,
    print_table,
    profiled,
    results_path,
    write_results,
)
from domain import commands as cmd
from domain.account import Account
from domain.campaigns import ResetCampaign
from domain.commands import parse_command
from domain.context import SYSTEM_ACTOR, Actor, ActorKind, RequestContext, Stamp, SystemClock
from domain.ledger import Ledger, _project
from domain.secrets import Argon2Parameters, PasswordHasher
from domain.user import User
from domain.values import AccountKind, Role

PASSWORD = "bench-Password-1234"
USER_AGENT = "secstate-bench/1"
SOURCE_IP = "198.51.100.7"
SAVE_BATCH = 1000  # aggregates per save(), as the ledger's default bulk batch
SCAN_BATCH = 5000  # notifications per select, as the log store's scan
CHUNK = 50  # commands per turn in (a)/(b)
GET_SAMPLE = 2000  # bare aggregates loaded one by one in (c)
WARMUP = 50  # commands per case before the timed rounds
PARTS = ("one-event", "bulk", "hashing")
GOAL_RATIO = 0.8
GOAL_BULK_SQLITE = 20_000


# --- the bare baseline ----------------------------------------------------------------------


class BareAggregate(Aggregate):
    """Nothing but the library: one event method with a payload."""

    @event("Noted")
    def note(self, text: str) -> None:
        self.last_text = text


class BareApp(Application[uuid.UUID]):
    name = "bare"


def bare_payload(bare: BareApp, target_bytes: int) -> tuple[str, int]:
    """A payload whose stored Noted event has ``target_bytes`` of state (or just over)."""

    def size(text: str) -> int:
        probe = BareAggregate()
        probe.note(text)
        return len(bare.mapper.to_stored_event(probe.collect_events()[-1]).state)

    payload = "x" * max(1, 1 + target_bytes - size("x"))
    return payload, size(payload)


def our_event_size(ledger: Ledger, aggregate: Aggregate) -> int:
    """Bytes of the stored state of the aggregate's last pending event."""
    last = aggregate.collect_events()[-1]
    return len(ledger.mapper.to_stored_event(last).state)


def prepare_bare(app: BareApp, count: int, payload: str) -> list[uuid.UUID]:
    """``count`` bare aggregates of two events each (created, noted), like ours."""
    ids: list[uuid.UUID] = []
    pending: list[Aggregate] = []
    for _ in range(count):
        aggregate = BareAggregate()
        aggregate.note(payload)
        pending.append(aggregate)
        ids.append(aggregate.id)
        if len(pending) >= SAVE_BATCH:
            app.save(*pending)
            pending = []
    if pending:
        app.save(*pending)
    return ids


# --- preparation of ours (not timed) --------------------------------------------------------


def system_stamp() -> Stamp:
    return Stamp(RequestContext(SYSTEM_ACTOR, user_agent=USER_AGENT), SystemClock().now())


def owner_stamp(owner: str) -> Stamp:
    return Stamp(
        RequestContext(Actor(ActorKind.USER, owner), SOURCE_IP, USER_AGENT), SystemClock().now()
    )


def prepare_accounts(ledger: Ledger, prefix: str, count: int) -> list[tuple[str, str]]:
    """``count`` accounts with one owner each, built with domain methods, saved in batches.

    Each account has two events (Opened, MemberAdded). Returns (account, owner) names.
    """
    stamp = system_stamp()
    names: list[tuple[str, str]] = []
    pending: list[Aggregate] = []
    for i in range(count):
        name = f"{prefix}-{i:06d}"
        owner = f"owner-{name}"
        account = Account.open(name, AccountKind.CUSTOMER, name, stamp)
        user = User.register(account.id, owner, f"{owner}@example.com", Role.OWNER, stamp)
        user.set_password(PASSWORD, ledger.hasher, stamp)
        account.add_member(user.id, owner, Role.OWNER.value, stamp)
        pending += [account, user]
        names.append((name, owner))
        if len(pending) >= SAVE_BATCH:
            ledger.save(*pending)
            pending = []
    if pending:
        ledger.save(*pending)
    return names


def cidrs(first: int, count: int) -> list[str]:
    """Distinct /32 networks, so no new entry is covered by an earlier one."""
    base = int(ipaddress.IPv4Address("10.0.0.0")) + first
    return [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(count)]


# --- (a)/(b) one event per command ----------------------------------------------------------


def ours_run(
    ledger: Ledger, targets: Sequence[tuple[str, str]], nets: Sequence[str], as_owner: bool
) -> None:
    """The whole path, one command per target."""
    for (account, owner), cidr in zip(targets, nets, strict=True):
        actor = Actor(ActorKind.USER, owner) if as_owner else SYSTEM_ACTOR
        ctx = RequestContext(actor, SOURCE_IP, USER_AGENT)
        command = parse_command(cmd.AddAllowlistEntry, account=account, cidr=cidr, label="office")
        ledger.add_allowlist_entry(command, ctx)


def bare_run(app: BareApp, ids: Sequence[uuid.UUID], payload: str) -> None:
    """Load, call, save per command."""
    for aggregate_id in ids:
        aggregate: BareAggregate = app.repository.get(aggregate_id)
        aggregate.note(payload)
        app.save(aggregate)


def ours_steps(
    ledger: Ledger,
    bare: BareApp,
    targets: Sequence[tuple[str, str]],
    bare_ids: Sequence[uuid.UUID],
    nets: Sequence[str],
    payload: str,
) -> dict[str, dict[str, float]]:
    """Ours' path (as Ledger._on_account runs it) and the bare one, timed step by step."""
    timer = StepTimer()
    for (account, owner), cidr, bare_id in zip(targets, nets, bare_ids, strict=True):
        with timer.step("request context + pydantic command"):
            ctx = RequestContext(Actor(ActorKind.USER, owner), SOURCE_IP, USER_AGENT)
            command = parse_command(
                cmd.AddAllowlistEntry, account=account, cidr=cidr, label="office"
            )
        with timer.step("actor check + load the account (1 query once both seen)"):
            checked = ledger._checked_load(Account, Account.create_id(command.account), ctx)
            loaded = checked if checked is not None else ledger.get_account(command.account)
        with timer.step("  for comparison: the account's events alone (1 query)"):
            _project(None, ledger.events.get(loaded.id))
        with timer.step("stamp"):
            stamp = ledger.stamp(ctx)
        with timer.step("domain: Account.add_allowlist_entry"):
            loaded.add_allowlist_entry(command.cidr, command.label, stamp)
        with timer.step("save (one write transaction)"):
            ledger.save(loaded)
        with timer.step("bare: repository.get (1 query)"):
            aggregate: BareAggregate = bare.repository.get(bare_id)
        with timer.step("bare: the method"):
            aggregate.note(payload)
        with timer.step("bare: save"):
            bare.save(aggregate)
    return timer.per_item(len(targets))


def bench_one_event(
    store: Store, events: int, repeat: int, profile_dir: Path | None
) -> dict[str, Any]:
    backend = store.backend
    ledger = store.ledger()
    bare = store.app(BareApp, "bare.sqlite3")
    probe = Account.open("size-probe", AccountKind.CUSTOMER, "size-probe", system_stamp())
    probe.add_allowlist_entry("10.255.255.255/32", "office", owner_stamp("owner-acct-000000"))
    ours_bytes = our_event_size(ledger, probe)
    payload, bare_bytes = bare_payload(bare, ours_bytes)

    log(f"[{backend}] (a/b) preparing {events} aggregates per case")
    owned = prepare_accounts(ledger, "acct", events)
    system = prepare_accounts(ledger, "sys", events)
    bare_ids = prepare_bare(bare, events, payload)

    # Every round gives each account one new /32; the last list is the warm-up's.
    nets = [cidrs((r + 1) * events, events) for r in range(repeat + 1)] + [cidrs(0, events)]

    warm = min(WARMUP, events)
    ours_run(ledger, owned[:warm], nets[-1][:warm], as_owner=True)
    ours_run(ledger, system[:warm], nets[-1][:warm], as_owner=False)
    bare_run(bare, bare_ids[:warm], payload)

    cases: dict[str, Callable[[int, int, int], object]] = {
        "ours": lambda r, i, j: ours_run(ledger, owned[i:j], nets[r][i:j], as_owner=True),
        "bare": lambda r, i, j: bare_run(bare, bare_ids[i:j], payload),
        "ours_system_actor": lambda r, i, j: ours_run(
            ledger, system[i:j], nets[r][i:j], as_owner=False
        ),
    }
    samples = interleave_chunks(
        cases,
        repeat,
        events,
        CHUNK,
        on_round=lambda r: log(f"[{backend}] (a/b) round {r + 1}/{repeat} done"),
    )
    rates, cpu = samples.rates, samples.cpu_us
    if profile_dir is not None:
        log(f"[{backend}] (a/b) profiling one more round of ours and bare")
        with profiled(profile_dir / f"ledger-{backend}-ours.prof"):
            ours_run(ledger, owned, nets[repeat], as_owner=True)
        with profiled(profile_dir / f"ledger-{backend}-bare.prof"):
            bare_run(bare, bare_ids, payload)

    log(f"[{backend}] (a/b) one more pass, step by step")
    steps = ours_steps(ledger, bare, owned, bare_ids, cidrs((repeat + 2) * events, events), payload)
    return {
        "steps_us_per_command": steps,
        "events_per_round": events,
        "rounds": repeat,
        "chunk": CHUNK,
        "stored_event_bytes": {"ours": ours_bytes, "bare": bare_bytes},
        # Opened + MemberAdded (bare: created + noted), the warm-up (first few), the rounds.
        "events_per_aggregate_at_end": f"{2 + repeat} (+1 for the first {warm})",
        "rates": {name: Summary.of(v).as_dict() for name, v in rates.items()},
        "cpu_us_per_event": {name: Summary.of(v).as_dict() for name, v in cpu.items()},
        "ratio_of_medians": statistics.median(rates["ours"]) / statistics.median(rates["bare"]),
        "paired_ratio": Summary.of(paired_ratios(rates["ours"], rates["bare"])).as_dict(),
        "system_actor_ratio": Summary.of(
            paired_ratios(rates["ours_system_actor"], rates["bare"])
        ).as_dict(),
        # bare CPU / ours CPU: what the ratio of rates would be if CPU were all that counted.
        "cpu_ratio": Summary.of(paired_ratios(cpu["bare"], cpu["ours"])).as_dict(),
        "cpu_ratio_system_actor": Summary.of(
            paired_ratios(cpu["bare"], cpu["ours_system_actor"])
        ).as_dict(),
    }


# --- (c) bulk password resets ---------------------------------------------------------------


def prepare_members(ledger: Ledger, users: int, per_account: int) -> list[str]:
    """Accounts of ``per_account`` users each (Registered + PasswordSet); their names."""
    stamp = system_stamp()
    names: list[str] = []
    for a in range(math.ceil(users / per_account)):
        name = f"bulk-{a:04d}"
        names.append(name)
        account = Account.open(name, AccountKind.CUSTOMER, name, stamp)
        pending: list[Aggregate] = []
        for u in range(a * per_account, min(users, (a + 1) * per_account)):
            username = f"user-{u:07d}"
            user = User.register(
                account.id, username, f"{username}@example.com", Role.TEAMMATE, stamp
            )
            user.set_password(PASSWORD, ledger.hasher, stamp)
            account.add_member(user.id, username, Role.TEAMMATE.value, stamp)
            pending.append(user)
        ledger.save(account, *pending)
    return names


def bare_mark_all(app: BareApp, payload: str) -> int:
    """The bare library's ``everyone``: one scan, replay all, one event each, batched saves."""
    aggregates: dict[uuid.UUID, Any] = {}
    start = 1
    while notifications := app.recorder.select_notifications(start=start, limit=SCAN_BATCH):
        for n in notifications:
            e: Any = app.mapper.to_domain_event(n)
            aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        start = notifications[-1].id + 1
    return _bare_mark(app, list(aggregates.values()), payload)


def bare_mark_each(app: BareApp, ids: Sequence[uuid.UUID], payload: str) -> int:
    """The bare library's per-id path: ``repository.get`` each, then batched saves."""
    return _bare_mark(app, [app.repository.get(i) for i in ids], payload)


def _bare_mark(app: BareApp, aggregates: list[BareAggregate], payload: str) -> int:
    for start in range(0, len(aggregates), SAVE_BATCH):
        batch = aggregates[start : start + SAVE_BATCH]
        for aggregate in batch:
            aggregate.note(payload)
        app.save(*batch)
    return len(aggregates)


def prepare_noise(ledger: Ledger, events: int, per_account: int = 100) -> None:
    """About ``events`` events of other aggregates: accounts toggling their 2FA policy."""
    stamp = system_stamp()
    pending: list[Aggregate] = []
    for a in range(math.ceil(events / per_account)):
        account = Account.open(f"noise-{a:06d}", AccountKind.CUSTOMER, "noise", stamp)
        for i in range(per_account - 1):
            account.set_two_factor_policy(i % 2 == 0, stamp)
        pending.append(account)
        if len(pending) * per_account >= 5000:
            ledger.save(*pending)
            pending = []
    if pending:
        ledger.save(*pending)


def bench_bulk(
    store: Store, users: int, repeat: int, profile_dir: Path | None, noise: int = 0
) -> dict[str, Any]:
    backend = store.backend
    ledger = store.ledger()
    bare = store.app(BareApp, "bare.sqlite3")
    stamp = system_stamp()
    probe = User.register(uuid.uuid4(), "size-probe", "probe@example.com", Role.OWNER, stamp)
    probe.require_password_reset("benchmark", "bench-everyone-0", stamp)
    ours_bytes = our_event_size(ledger, probe)
    payload, bare_bytes = bare_payload(bare, ours_bytes)

    log(f"[{backend}] (c) preparing {users} users, and {users} bare aggregates")
    started = time.perf_counter()
    accounts = prepare_members(ledger, users, per_account=1000)
    if noise:
        prepare_noise(ledger, noise)
    bare_ids = prepare_bare(bare, users, payload)
    log(f"[{backend}] (c) prepared in {time.perf_counter() - started:.1f}s")
    ctx = RequestContext(Actor(ActorKind.STAFF, "e-bench"), SOURCE_IP, USER_AGENT)
    get_sample = bare_ids[:GET_SAMPLE]
    seconds: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}
    log_sizes: list[int] = []
    # Ours' runs split in two: the read of the log (ResetCampaign._reset_statuses) and the
    # rest, which is building and storing the events.
    scan_seconds: list[float] = []
    write_rates: dict[str, list[float]] = {}
    # (unwrapped first: each backend's run installs its own timer)
    scan = getattr(ResetCampaign._reset_statuses, "__wrapped__", ResetCampaign._reset_statuses)

    def timed_scan(campaign: ResetCampaign, only: Any) -> Any:
        start = time.perf_counter()
        try:
            return scan(campaign, only)
        finally:
            scan_seconds.append(time.perf_counter() - start)

    timed_scan.__wrapped__ = scan  # type: ignore[attr-defined]  # found by the next run
    ResetCampaign._reset_statuses = timed_scan  # type: ignore[method-assign]  # timing only

    def timed_marking(path: str, mark: Callable[[], int], expected: int = users) -> float:
        start, cpu_start = time.perf_counter(), time.process_time()
        marked = mark()
        elapsed = time.perf_counter() - start
        if marked != expected:
            raise RuntimeError(f"{path}: marked {marked}, expected {expected}")
        seconds.setdefault(path, []).append(elapsed)
        cpu_us.setdefault(path, []).append((time.process_time() - cpu_start) / marked * 1e6)
        return marked / elapsed

    def ours(path: str, round_no: int) -> float:
        target: dict[str, Any] = (
            {"everyone": True} if path == "everyone" else {"accounts": accounts}
        )
        command = parse_command(
            cmd.RequirePasswordResets,
            reason="benchmark",
            campaign_id=f"bench-{path}-{round_no}",
            **target,
        )
        log_sizes.append(ledger.recorder.max_notification_id() or 0)
        scan_seconds.clear()
        rate = timed_marking(path, lambda: ledger.require_password_resets(command, ctx).marked)
        write_seconds = seconds[path][-1] - sum(scan_seconds)
        seconds.setdefault(f"{path}_scan", []).append(sum(scan_seconds))
        write_rates.setdefault(path, []).append(users / write_seconds)
        return rate

    cases: dict[str, Callable[[int], float]] = {
        "everyone": lambda r: ours("everyone", r),
        "bare_scan": lambda r: timed_marking("bare_scan", lambda: bare_mark_all(bare, payload)),
        "accounts": lambda r: ours("accounts", r),
        # A get per aggregate runs at a steady rate: a sample tells it, in far less time.
        "bare_get": lambda r: timed_marking(
            "bare_get", lambda: bare_mark_each(bare, get_sample, payload), len(get_sample)
        ),
    }
    samples = interleave(
        cases,
        repeat,
        on_round=lambda r: log(f"[{backend}] (c) round {r + 1}/{repeat} done"),
    )
    result = {
        "users": users,
        "noise_events": noise,
        "accounts": len(accounts),
        "runs": repeat,
        "bare_get_sample": len(get_sample),
        "stored_event_bytes": {"ours": ours_bytes, "bare": bare_bytes},
        "ledger_log_size_before_each_run": log_sizes[: 2 * repeat],
        "rates": {name: Summary.of(s).as_dict() for name, s in samples.items()},
        "seconds": {name: Summary.of(s).as_dict() for name, s in seconds.items()},
        "cpu_us_per_event": {name: Summary.of(s).as_dict() for name, s in cpu_us.items()},
        "ratio_everyone_to_bare_scan": Summary.of(
            paired_ratios(samples["everyone"], samples["bare_scan"])
        ).as_dict(),
        "ratio_accounts_to_bare_get": Summary.of(
            paired_ratios(samples["accounts"], samples["bare_get"])
        ).as_dict(),
        # The same runs of ours without their read of the log: building and storing.
        "write_rates": {name: Summary.of(s).as_dict() for name, s in write_rates.items()},
    }
    # After the summaries: the profiled runs are slower and must not count.
    if profile_dir is not None:
        for path in ("everyone", "accounts"):
            log(f"[{backend}] (c) profiling one more {path} run")
            with profiled(profile_dir / f"ledger-{backend}-bulk-{path}.prof"):
                ours(path, repeat)
    return result


# --- (d) argon2 defaults --------------------------------------------------------------------


def bench_hashing(repeat: int) -> dict[str, Any]:
    params = Argon2Parameters()
    hasher = PasswordHasher(params)
    log(
        f"(d) argon2id t={params.time_cost} m={params.memory_cost_kib} KiB "
        f"p={params.parallelism}: {repeat} hashes and verifies"
    )
    hashes: list[float] = []
    verifies: list[float] = []
    phc = hasher.hash(PASSWORD)  # warm-up
    for _ in range(repeat):
        start = time.perf_counter()
        phc = hasher.hash(PASSWORD)
        hashes.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        if not hasher.verify(phc, PASSWORD):
            raise RuntimeError("argon2 verify failed")
        verifies.append((time.perf_counter() - start) * 1000)
    return {
        "params": {
            "time_cost": params.time_cost,
            "memory_cost_kib": params.memory_cost_kib,
            "parallelism": params.parallelism,
        },
        "hash_ms": Summary.of(hashes).as_dict(),
        "verify_ms": Summary.of(verifies).as_dict(),
    }


# --- report ---------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    one_event = {b: r["one_event"] for b, r in results["backends"].items() if "one_event" in r}
    bulk = {b: r["bulk"] for b, r in results["backends"].items() if "bulk" in r}
    rows: list[list[object]] = []
    for backend, a in one_event.items():
        rates, cpu = a["rates"], a["cpu_us_per_event"]
        for case, label, ratio, cpu_ratio in (
            ("ours", "ours (owner acts)", "paired_ratio", "cpu_ratio"),
            (
                "ours_system_actor",
                "ours (system acts: no actor check)",
                "system_actor_ratio",
                "cpu_ratio_system_actor",
            ),
            ("bare", "bare library", None, None),
        ):
            rows.append(
                [
                    f"{backend}: {label}",
                    fmt_num(rates[case]["median"]),
                    f"{fmt_num(rates[case]['min'])}-{fmt_num(rates[case]['max'])}",
                    f"{a[ratio]['median']:.2f}" if ratio else "",
                    f"{a[ratio]['min']:.2f}-{a[ratio]['max']:.2f}" if ratio else "",
                    fmt_num(cpu[case]["median"]),
                    f"{a[cpu_ratio]['median']:.2f}" if cpu_ratio else "",
                ]
            )
    if rows:
        first = next(iter(one_event.values()))
        print_table(
            f"(a)/(b) one event per command: median of {first['rounds']} interleaved rounds "
            f"of {first['events_per_round']} commands per case; stored event "
            f"{first['stored_event_bytes']['ours']} B ours, "
            f"{first['stored_event_bytes']['bare']} B bare; goal ratio >= {GOAL_RATIO}",
            [
                "backend: case",
                "events/s",
                "range",
                "ours/bare",
                "ratio range",
                "CPU us/event",
                "bare/ours CPU",
            ],
            rows,
        )
    if one_event:
        backends = list(one_event)
        names = list(next(iter(one_event.values()))["steps_us_per_command"])
        print_table(
            "(a)/(b) step by step, us per command (wall / CPU), after the rounds",
            ["step", *backends],
            [
                [name]
                + [
                    f"{fmt_num(a['steps_us_per_command'][name]['wall_us'])} / "
                    f"{fmt_num(a['steps_us_per_command'][name]['cpu_us'])}"
                    for a in one_event.values()
                ]
                for name in names
            ],
        )
    rows = []
    for backend, c in bulk.items():
        for path, label, ratio in (
            ("everyone", "ours, everyone=True", "ratio_everyone_to_bare_scan"),
            ("bare_scan", "bare, scan + replay", None),
            ("accounts", "ours, accounts=[...]", "ratio_accounts_to_bare_get"),
            ("bare_get", "bare, get each", None),
        ):
            rate = c["rates"][path]
            write = c.get("write_rates", {}).get(path)
            scan = c["seconds"].get(f"{path}_scan")
            rows.append(
                [
                    f"{backend}: {label}",
                    fmt_num(rate["median"]),
                    f"{fmt_num(rate['min'])}-{fmt_num(rate['max'])}",
                    f"{c['seconds'][path]['median']:.2f}",
                    f"{scan['median']:.2f}" if scan else "",
                    fmt_num(write["median"]) if write else "",
                    fmt_num(c["cpu_us_per_event"][path]["median"]),
                    f"{c[ratio]['median']:.2f}" if ratio else "",
                ]
            )
    if rows:
        first = next(iter(bulk.values()))
        print_table(
            f"(c) require_password_resets, {first['users']:,} users (bare get-each: a sample of "
            f"{first['bare_get_sample']:,}), {first.get('noise_events', 0):,} events of other "
            f"aggregates in the ledger's log first: median of {first['runs']} runs; goal >= "
            f"{GOAL_BULK_SQLITE:,} events/s on SQLite",
            [
                "backend: path",
                "events/s",
                "range",
                "seconds",
                "of which read",
                "without the read, events/s",
                "CPU us/event",
                "ours/bare",
            ],
            rows,
        )
    h = results.get("hashing")
    if h:
        p = h["params"]
        print_table(
            f"(d) argon2id t={p['time_cost']} m={p['memory_cost_kib']} KiB "
            f"p={p['parallelism']} (the default), ms",
            ["operation", "median", "min", "max"],
            [
                [op, f"{h[key]['median']:.1f}", f"{h[key]['min']:.1f}", f"{h[key]['max']:.1f}"]
                for op, key in (("hash", "hash_ms"), ("verify", "verify_ms"))
            ],
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ledger",
        description="Issue 2: ledger command path vs the bare library; bulk resets; argon2.",
    )
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument(
        "--events",
        type=int,
        default=500,
        help="(a)/(b): commands per case per round (default 500)",
    )
    parser.add_argument(
        "--users", type=int, default=20_000, help="(c): users marked per run (default 20000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="(a)/(b): interleaved rounds (default 5)"
    )
    parser.add_argument("--bulk-repeat", type=int, default=3, help="(c): runs per path (default 3)")
    parser.add_argument(
        "--bulk-noise",
        type=int,
        default=0,
        help="(c): events of other aggregates added to the ledger's log first (default 0)",
    )
    parser.add_argument(
        "--hash-repeat", type=int, default=5, help="(d): hashes and verifies (default 5; 0 skips)"
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable): one-event = (a)/(b), bulk = (c), hashing = (d)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one extra round of each case (stderr, .prof files)",
    )
    args = parser.parse_args(argv)
    for name in ("events", "users", "repeat", "bulk_repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hash_repeat < 0:
        parser.error("--hash-repeat must not be negative")
    if args.bulk_noise < 0:
        parser.error("--bulk-noise must not be negative")
    args.only = args.only or list(PARTS)
    if args.hash_repeat == 0 and "hashing" in args.only:
        args.only.remove("hashing")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # On SIGTERM too, unwind so the temporary directory and PostgreSQL schema go away.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    if "postgres" in backends:
        problem = postgres_problem()
        if problem:
            print(
                f"error: {problem} (set SECSTATE_BENCH_POSTGRES_URL, or use --backend sqlite)",
                file=sys.stderr,
            )
            return 1
    info = machine_info(with_postgres="postgres" in backends)
    print_machine_info(info)
    profile_dir = RESULTS_DIR if args.profile else None
    results: dict[str, Any] = {"machine": info, "args": vars(args), "backends": {}}
    path = results_path("ledger")  # rewritten after each part, so a stopped run keeps its figures
    started = time.perf_counter()
    for backend in backends if {"one-event", "bulk"} & set(args.only) else []:
        entry: dict[str, Any] = results["backends"].setdefault(backend, {})
        if "one-event" in args.only:
            with fresh_store(backend) as store:
                entry["one_event"] = bench_one_event(store, args.events, args.repeat, profile_dir)
            write_results(path, results)
        if "bulk" in args.only:
            with fresh_store(backend) as store:
                entry["bulk"] = bench_bulk(
                    store, args.users, args.bulk_repeat, profile_dir, args.bulk_noise
                )
            write_results(path, results)
    if "hashing" in args.only:
        results["hashing"] = bench_hashing(args.hash_repeat)
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_average_after"] = machine_info(False)["load_average"]
    report(results)
    write_results(path, results)
    log(f"done in {results['elapsed_s']:.0f}s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
