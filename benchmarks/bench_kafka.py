"""Issue 8: the Kafka relay and the consumers against a real Kafka-protocol broker.

Usage: python -m benchmarks.bench_kafka [--events N] [--quick] [--backend B] [--repeat R]
        [--only relay|latency|consumers|scale] [--rate E] [--seconds S]
        [--campaign-users U] [--profile] [--confluent]

Every part starts its own broker (Tansu, memory storage: tests/kafka_broker.py) and its
own stores, and writes its samples to benchmarks/results/.

(a) relay: events/s from the store to broker-acknowledged. An in-process ``catch_up``
    from position 0 of a relay follower (the same ``RelaySink``, ``MessageBuilder`` and
    ``KafkaPublisher`` as ``secstate relay run``) over a store of N events, against a
    bare kafka-python producer sending the very same keys, values and headers (built
    beforehand) with the same settings, in one send-all-then-flush, and in flushes of the
    relay's batch size. Interleaved, ``--repeat`` rounds, a fresh topic each. Beside them:
    the relay with a publisher that keeps the messages (reading, numbering, building and
    its bookkeeping, no broker), and the ledger's bulk write rate (a forced-reset
    campaign over the store's users). ``--confluent`` adds confluent-kafka behind the
    same publisher interface (installed by hand; not a dependency).
(b) latency: command to ``reactions`` handling at a steady ``--rate`` events/s for
    ``--seconds``: a writer process records password-reset-required events (one per user,
    ``rate/100`` every 10 ms); ``secstate relay run`` runs as its own process; the
    ``reactions`` consumer runs here and takes, after each message's transaction, the
    time since the event was recorded (``ce_recordedtime``). Once per configuration of
    the relay's poll interval and the consumer's ``fetch_max_wait_ms``.
(c) consumers: ``state-replica`` (SQLite store) reading the topic of (a), against a bare
    kafka-python consumer reading the same topic (and the same with the runtime's
    ``decode`` of each message). Rates from the first message to the last (the group
    join is not counted).
(d) scale: ``state-replica`` as 1 and as 2 ``secstate consume`` processes in one group
    on a 4-partition topic; and the relay's lag (log head minus its position, sampled
    every 0.25 s) while a forced-reset campaign marks ``--campaign-users`` users.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    BACKENDS,
    CHEAP_ARGON2,
    RESULTS_DIR,
    Store,
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
from domain.commands import RequirePasswordResets
from domain.context import Actor, ActorKind, RequestContext, Stamp
from domain.ledger import Ledger
from domain.user import User
from domain.values import AccountKind, Role
from producers.kafka import KafkaPublisher, ProducerTuning
from producers.messages import MessageBuilder, OutgoingMessage
from producers.publisher import PublishError
from producers.relay import RelaySink
from projections.follower import Follower
from projections.source import LogSource
from projections.status import read_position
from secstate.bootstrap import build_ledger, open_view_db
from secstate.relaying import kafka_connection, producer_tuning
from secstate.settings import Settings

if TYPE_CHECKING:
    from kafka_broker import KafkaBroker  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
SECSTATE = str(Path(sys.executable).with_name("secstate"))
PARTS = ("relay", "latency", "consumers", "scale")
RELAY_BATCH = 2000  # the follower batch of `secstate relay run`
PER_ACCOUNT = 100  # users per account in the prepared stores
PASSWORD = "correct horse battery staple 42"
SOURCE_IP = "198.51.100.7"
USER_AGENT = "bench-kafka"
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
# (relay poll interval s, consumer fetch_max_wait_ms, share of --rate): the defaults,
# then tuned ones, then the tuned ones at a rate one consumer keeps up with
LATENCY_CONFIGS = ((0.5, 500, 1.0), (0.05, 500, 1.0), (0.05, 100, 1.0), (0.05, 100, 0.3))


def start_broker(workdir: Path) -> KafkaBroker:
    """The tests' Tansu broker (tests/kafka_broker.py), memory storage."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from kafka_broker import start_memory_broker  # type: ignore[import-not-found, unused-ignore]

    return start_memory_broker(workdir)


def load_now() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def with_kafka(settings: Settings, bootstrap: str, topic: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap_servers": bootstrap, "events_topic": topic})


def system_ctx() -> RequestContext:
    return RequestContext(Actor(ActorKind.STAFF, "e-bench"), SOURCE_IP, USER_AGENT)


def stamp_now(ledger: Ledger) -> Stamp:
    return Stamp(RequestContext(source_ip=SOURCE_IP, user_agent=USER_AGENT), ledger.clock.now())


# --- stores ---------------------------------------------------------------------------------


def prepare_users(ledger: Ledger, users: int, *, passwords: bool, prefix: str = "k") -> list[Any]:
    """Accounts of PER_ACCOUNT users (Opened, MemberAdded per user; Registered, and
    PasswordSet with ``passwords``); returns the users, saved."""
    stamp = stamp_now(ledger)
    made: list[Any] = []
    for a in range(math.ceil(users / PER_ACCOUNT)):
        name = f"{prefix}-{a:05d}"
        account = Account.open(name, AccountKind.CUSTOMER, name, stamp)
        pending: list[Any] = []
        for u in range(a * PER_ACCOUNT, min(users, (a + 1) * PER_ACCOUNT)):
            username = f"{prefix}-user-{u:07d}"
            user = User.register(
                account.id, username, f"{username}@example.com", Role.TEAMMATE, stamp
            )
            if passwords:
                user.set_password(PASSWORD, ledger.hasher, stamp)
            account.add_member(user.id, username, Role.TEAMMATE.value, stamp)
            pending.append(user)
        ledger.save(account, *pending)
        made.extend(pending)
    return made


def campaign(ledger: Ledger, campaign_id: str) -> tuple[int, float]:
    """A forced-reset campaign over everyone: (events written, seconds)."""
    command = RequirePasswordResets(reason="benchmark", campaign_id=campaign_id, everyone=True)
    started = time.perf_counter()
    marked = ledger.require_password_resets(command, system_ctx()).marked
    return marked, time.perf_counter() - started


def head_of(ledger: Ledger) -> int:
    return int(ledger.log_store.head())


# --- publishers -----------------------------------------------------------------------------


class KeepingPublisher:
    """Keeps what it is given: the relay's own work, without a broker."""

    topic = "kept"

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.messages.extend(messages)

    def close(self) -> None:
        pass


class ConfluentPublisher:
    """The relay's publisher interface on confluent-kafka, with the same settings
    (measured here only; kafka-python is secstate's client)."""

    def __init__(self, bootstrap: str, topic: str, tuning: ProducerTuning) -> None:
        from confluent_kafka import Producer  # type: ignore[import-not-found, unused-ignore]

        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": tuning.compression_type,
                "linger.ms": tuning.linger_ms,
                "batch.size": tuning.batch_size,
                "allow.auto.create.topics": False,
            }
        )

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        failed: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(str(error))

        producer = self._producer
        for m in messages:
            while True:
                try:
                    producer.produce(
                        self.topic, m.value, m.key, headers=m.headers, on_delivery=delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        left = producer.flush(60)
        if left or failed:
            raise PublishError(f"{left} unacknowledged, {len(failed)} refused: {failed[:1]}")

    def close(self) -> None:
        self._producer.flush(5)


def bare_producer(bootstrap: str, tuning: ProducerTuning) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=[bootstrap],
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        compression_type=tuning.compression_type,
        linger_ms=tuning.linger_ms,
        batch_size=tuning.batch_size,
        request_timeout_ms=tuning.request_timeout_ms,
        delivery_timeout_ms=tuning.delivery_timeout_ms,
        max_block_ms=tuning.max_block_ms,
    )


def bare_send(
    bootstrap: str,
    topic: str,
    messages: Sequence[OutgoingMessage],
    tuning: ProducerTuning,
    flush_every: int | None,
) -> None:
    """kafka-python alone: send everything (flushing every ``flush_every``), then flush."""
    producer = bare_producer(bootstrap, tuning)
    try:
        step = flush_every or len(messages)
        for start in range(0, len(messages), step):
            futures = [
                producer.send(topic, key=m.key, value=m.value, headers=m.headers)
                for m in messages[start : start + step]
            ]
            producer.flush(timeout=60)
            if not all(f.is_done and f.succeeded() for f in futures):
                raise RuntimeError("the bare producer's messages were not all acknowledged")
    finally:
        producer.close(timeout=5)


def relay_follower(
    settings: Settings, reader: Any, name: str, connect: Callable[[], Any]
) -> tuple[Follower, Callable[[], None]]:
    """A relay follower as ``RelayFollowerKind.open`` makes it, under its own name (so
    every round starts from position 0 with empty numbering), with ``connect``."""
    db = open_view_db(settings, name)
    sink = RelaySink(name, db, MessageBuilder(settings.events_source), connect)

    def close() -> None:
        try:
            sink.close()
        finally:
            db.close()

    return Follower(LogSource.of(reader), sink, RELAY_BATCH), close


def kafka_publisher(settings: Settings, name: str) -> Callable[[], Any]:
    connection = kafka_connection(settings, name)
    tuning = producer_tuning(settings)
    return lambda: KafkaPublisher(connection, settings.events_topic, tuning)


# --- (a) relay throughput -------------------------------------------------------------------


def bench_relay(
    store: Store,
    broker: KafkaBroker,
    events: int,
    repeat: int,
    confluent: bool,
    profile_dir: Path | None,
) -> dict[str, Any]:
    backend = store.backend
    ledger = store.ledger()
    users = max(1, (events - events // (PER_ACCOUNT * 3)) // 4)
    log(f"[{backend}] (a) preparing {users} users (4 events each)")
    started = time.perf_counter()
    prepare_users(ledger, users, passwords=True)
    prep_s = time.perf_counter() - started
    marked, campaign_s = campaign(ledger, "bench-a")
    head = head_of(ledger)
    log(
        f"[{backend}] (a) store: {head} events ({prep_s:.1f}s); campaign {marked} in "
        f"{campaign_s:.2f}s ({marked / campaign_s:,.0f}/s); load {load_now()}"
    )
    tuning = producer_tuning(store.settings)

    kept = KeepingPublisher()
    follower, close = relay_follower(store.settings, ledger, "relay_kept0", lambda: kept)
    try:
        follower.catch_up()
    finally:
        close()
    messages = kept.messages
    if len(messages) != head:
        raise RuntimeError(f"the relay built {len(messages)} messages for {head} events")
    value_bytes = statistics.mean(len(m.value) for m in messages)
    header_bytes = statistics.mean(sum(len(k) + len(v) for k, v in m.headers) for m in messages)

    rates: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}
    loads: list[str] = []

    def timed(case: str, run: Callable[[], None]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.setdefault(case, []).append(head / wall)
        cpu_us.setdefault(case, []).append(cpu / head * 1e6)

    def relay_case(round_no: int, label: str, connect_for: Callable[[Settings], Any]) -> None:
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="bench")
        settings = with_kafka(store.settings, broker.bootstrap, topic)
        name = f"relay_{label}{round_no}"
        follower, close = relay_follower(settings, ledger, name, connect_for(settings))
        try:
            timed(label, lambda: check_moved(follower.catch_up(), head))
        finally:
            close()

    def kept_case(round_no: int) -> None:
        keep = KeepingPublisher()
        follower, close = relay_follower(
            store.settings, ledger, f"relay_kept{round_no + 1}", lambda: keep
        )
        try:
            timed("relay_no_broker", lambda: check_moved(follower.catch_up(), head))
        finally:
            close()

    def bare_case(round_no: int, label: str, flush_every: int | None) -> None:
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="bench")
        timed(label, lambda: bare_send(broker.bootstrap, topic, messages, tuning, flush_every))

    def confluent_bare(round_no: int) -> None:
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="bench")
        timed(
            "confluent_bare",
            lambda: ConfluentPublisher(broker.bootstrap, topic, tuning).publish(messages),
        )

    cases: list[tuple[str, Callable[[int], None]]] = [
        ("relay", lambda r: relay_case(r, "relay", lambda s: kafka_publisher(s, "relay"))),
        ("bare", lambda r: bare_case(r, "bare", None)),
        ("bare_batched", lambda r: bare_case(r, "bare_batched", RELAY_BATCH)),
        ("relay_no_broker", kept_case),
    ]
    if confluent:
        cases += [
            (
                "relay_confluent",
                lambda r: relay_case(
                    r,
                    "relay_confluent",
                    lambda s: lambda: ConfluentPublisher(broker.bootstrap, s.events_topic, tuning),
                ),
            ),
            ("confluent_bare", confluent_bare),
        ]
    for round_no in range(repeat):
        # the order rotates, so no case always runs first (or last) in a round
        for k in range(len(cases)):
            cases[(round_no + k) % len(cases)][1](round_no)
        loads.append(load_now())
        log(f"[{backend}] (a) round {round_no + 1}/{repeat} done, load {loads[-1]}")
    campaigns = [campaign(ledger, f"bench-a-{r}") for r in range(max(1, repeat))]
    profile: str | None = None
    if profile_dir is not None:
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="bench")
        settings = with_kafka(store.settings, broker.bootstrap, topic)
        follower, close = relay_follower(
            settings, ledger, "relay_profile", kafka_publisher(settings, "relay")
        )
        path = profile_dir / f"kafka-relay-{backend}.prof"
        try:
            with profiled(path, top=40):
                follower.catch_up()
        finally:
            close()
        profile = str(path)
    return {
        "events": head,
        "users": users,
        "repeat": repeat,
        "value_bytes_mean": value_bytes,
        "header_bytes_mean": header_bytes,
        "headers_per_message": len(messages[0].headers),
        "partitions": store.settings.events_topic_partitions,
        "relay_batch": RELAY_BATCH,
        "tuning": {
            "linger_ms": tuning.linger_ms,
            "batch_size": tuning.batch_size,
            "compression": tuning.compression_type,
        },
        "rates": {k: Summary.of(v).as_dict() for k, v in rates.items()},
        "cpu_us_per_event": {k: Summary.of(v).as_dict() for k, v in cpu_us.items()},
        "ratio_relay_to_bare": Summary.of(paired_ratios(rates["relay"], rates["bare"])).as_dict(),
        "ratio_relay_to_bare_batched": Summary.of(
            paired_ratios(rates["relay"], rates["bare_batched"])
        ).as_dict(),
        **(
            {
                "ratio_relay_confluent_to_bare": Summary.of(
                    paired_ratios(rates["relay_confluent"], rates["bare"])
                ).as_dict()
            }
            if confluent
            else {}
        ),
        "campaign_events_per_s": Summary.of([m / s for m, s in campaigns]).as_dict(),
        "campaign_events": campaigns[0][0],
        "load": loads,
        "profile": profile,
        "_messages_topic": None,
    }


def check_moved(moved: int, expected: int) -> None:
    if moved != expected:
        raise RuntimeError(f"the relay moved {moved}, expected {expected}")


# --- child processes ------------------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `secstate` child on this store (no keys: the relay and the
    consumers need none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env["SECSTATE_HOME"] = str(settings.home)
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    if settings.kafka_bootstrap_servers is not None:
        env["SECSTATE_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
    env["SECSTATE_EVENTS_TOPIC"] = settings.events_topic
    env["SECSTATE_KEYS"] = ""
    env.update(extra)
    return env


@contextmanager
def child(
    args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A `secstate` child process, stopped with SIGTERM (SIGKILL after 20 s) on exit."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [SECSTATE, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def relay_position(settings: Settings) -> int:
    db = open_view_db(settings, "relay")
    try:
        return read_position(db, "relay") or 0
    finally:
        db.close()


def wait_until(what: str, done: Callable[[], bool], timeout: float, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        time.sleep(poll)


# --- (b) end-to-end latency -----------------------------------------------------------------


def writer_main(
    home: str,
    database_url: str | None,
    users: int,
    rate: int,
    seconds: float,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """The writer process: users first, then ``rate`` reset-required events a second."""
    values: dict[str, Any] = {"home": Path(home), **CHEAP_ARGON2}
    if database_url:
        values["database_url"] = database_url
    ledger = build_ledger(Settings(**values))
    try:
        made = prepare_users(ledger, users, passwords=False, prefix="lat")
        ready.put(head_of(ledger))
        go.wait(600)
        per_tick, tick = max(1, rate // 100), 0.01
        started = time.perf_counter()
        written = late_ticks = 0
        n = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - written
            if due > 0:
                stamp = stamp_now(ledger)
                batch = []
                for _ in range(min(due, per_tick * 5)):
                    user = made[n % len(made)]
                    user.require_password_reset("latency", f"lat-{n}", stamp)
                    batch.append(user)
                    n += 1
                ledger.save(*batch)
                written += len(batch)
                if due > per_tick:
                    late_ticks += 1
            next_at = started + (math.floor(elapsed / tick) + 1) * tick
            time.sleep(max(0.0, next_at - time.perf_counter()))
        out.put(
            {
                "written": written,
                "seconds": time.perf_counter() - started,
                "late_ticks": late_ticks,
                "head": head_of(ledger),
            }
        )
    finally:
        ledger.close()


def bench_latency(
    backend: str,
    broker: KafkaBroker,
    workdir: Path,
    rate: int,
    seconds: float,
    configs: Sequence[tuple[float, int, float]],
) -> list[dict[str, Any]]:
    return [
        latency_run(backend, broker, workdir, max(1, int(rate * share)), seconds, poll_s, fetch_ms)
        for poll_s, fetch_ms, share in configs
    ]


def latency_run(
    backend: str,
    broker: KafkaBroker,
    workdir: Path,
    rate: int,
    seconds: float,
    poll_s: float,
    fetch_ms: int,
) -> dict[str, Any]:
    """One configuration: a fresh store and topic, the writer, the relay, reactions."""
    from consumers import RunOptions
    from consumers import reactions as r
    from consumers.runner import run_in_thread

    ctx = multiprocessing.get_context("spawn")
    seen = [0]
    latencies: list[float] = []
    measuring = threading.Event()

    def after(delivered: Any, result: Any) -> None:
        seen[0] += 1
        if measuring.is_set() and delivered.ce_type.endswith("password_reset_required.v1"):
            now = datetime.now(UTC)
            latencies.append((now - delivered.attributes.recordedtime).total_seconds())

    with fresh_store(backend) as store:
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="lat")
        settings = with_kafka(store.settings, broker.bootstrap, topic)
        build_ledger(settings).close()  # the store's tables, before the relay looks
        users = max(100, min(5000, rate * 2))
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        database_url = settings.database_url.get_secret_value() if settings.database_url else None
        writer = ctx.Process(
            target=writer_main,
            args=(str(settings.home), database_url, users, rate, seconds, ready, go, out),
        )
        app = r.open_app(str(workdir / f"reactions-{uuid.uuid4().hex[:6]}.db"))
        options = RunOptions(
            consumer_config={**FAST_GROUP, "fetch_max_wait_ms": fetch_ms},
            after_transaction=after,
        )
        label = f"poll {poll_s}s, fetch_max_wait {fetch_ms}ms"
        log(f"[{backend}] (b) {label}: {rate}/s for {seconds:.0f}s; load {load_now()}")
        writer.start()
        stop: threading.Event | None = None
        try:
            prepared = int(ready.get(timeout=300))
            relay_args = ["relay", "run", "--poll-interval", str(poll_s)]
            with child(relay_args, child_env(settings), workdir / "relay-latency.log"):
                thread, stop, state = run_in_thread(
                    app, broker.bootstrap, topic, f"lat-{uuid.uuid4().hex[:6]}", options=options
                )
                wait_until("the backlog", lambda: seen[0] >= prepared, 300)
                load_before = load_now()
                measuring.set()
                go.set()
                written = out.get(timeout=seconds + 300)
                head = int(written["head"])
                wait_until("the paced events", lambda: seen[0] >= head, 300)
                load_after = load_now()
                stop.set()
                thread.join(60)
                if "error" in state:
                    raise RuntimeError(f"reactions failed: {state['error']}")
        finally:
            go.set()
            if stop is not None:
                stop.set()
            writer.join(60)
            app.store.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    result = {
        "relay_poll_interval_s": poll_s,
        "fetch_max_wait_ms": fetch_ms,
        "rate": rate,
        "seconds": written["seconds"],
        "written": written["written"],
        "achieved_rate": written["written"] / written["seconds"],
        "writer_late_ticks": written["late_ticks"],
        "measured": len(latencies),
        "p50_ms": q[49] * 1000,
        "p90_ms": q[89] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": latencies[-1] * 1000,
        "load": [load_before, load_after],
    }
    log(
        f"[{backend}] (b) {label}: p50 {result['p50_ms']:.0f} ms, p99 "
        f"{result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms; load {load_after}"
    )
    return result


# --- (c) consumers --------------------------------------------------------------------------


def handled_span(location: str) -> tuple[int, float]:
    """(messages handled, seconds from the first to the last) of a SQLite consumer store."""
    with contextlib.closing(sqlite3.connect(location)) as conn:
        count, first, last = conn.execute(
            "SELECT count(*), min(handled_at), max(handled_at) FROM consumer_handled"
        ).fetchone()
    if not count:
        return 0, 0.0
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return int(count), span


def handled_count(location: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(location, timeout=5)) as conn:
            (count,) = conn.execute("SELECT count(*) FROM consumer_handled").fetchone()
    except sqlite3.OperationalError:  # not made yet
        return 0
    return int(count)


def replica_in_process(broker: KafkaBroker, topic: str, count: int, location: str) -> float:
    """state-replica in this process, in a group of its own: messages/s first to last."""
    from consumers import RunOptions
    from consumers import state_replica as replica
    from consumers.runner import run_in_thread

    app = replica.open_app(location)
    options = RunOptions(consumer_config={**FAST_GROUP, "fetch_max_wait_ms": 100})
    thread, stop, state = run_in_thread(
        app, broker.bootstrap, topic, f"replica-{uuid.uuid4().hex[:6]}", options=options
    )
    try:
        wait_until("state-replica", lambda: handled_count(location) >= count, 600, poll=0.2)
    finally:
        stop.set()
        thread.join(60)
        app.store.close()
    if "error" in state:
        raise RuntimeError(f"state-replica failed: {state['error']}")
    handled, span = handled_span(location)
    return (handled - 1) / span


def bare_consume(broker: KafkaBroker, topic: str, count: int, decode_too: bool) -> float:
    """kafka-python alone (no group, so no join to wait for), from the first poll to the
    ``count``-th record."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from consumers.delivery import decode

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_poll_records=500,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        seen = 0
        started = time.perf_counter()
        deadline = time.monotonic() + 600
        while seen < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                if decode_too:
                    for record in records:
                        decode(
                            [(str(k), bytes(v)) for k, v in record.headers],
                            record.value,
                            record.key,
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                        )
                seen += len(records)
        if seen < count:
            raise TimeoutError(f"read {seen} of {count}")
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def fill_topic(store: Store, broker: KafkaBroker, partitions: int, name: str) -> tuple[str, int]:
    """A new topic with the whole log of ``store``, published by the relay."""
    ledger = store.ledger()
    topic = broker.create_topic(partitions, prefix="bench")
    settings = with_kafka(store.settings, broker.bootstrap, topic)
    follower, close = relay_follower(settings, ledger, name, kafka_publisher(settings, "relay"))
    try:
        moved = follower.catch_up()
    finally:
        close()
    return topic, moved


def bench_consumers(
    store: Store, broker: KafkaBroker, workdir: Path, repeat: int
) -> dict[str, Any]:
    topic, count = fill_topic(store, broker, store.settings.events_topic_partitions, "relay_c")
    log(f"[{store.backend}] (c) {count} messages on {topic}; load {load_now()}")
    rates: dict[str, list[float]] = {"state_replica": [], "bare": [], "bare_decode": []}
    loads = []
    for round_no in range(repeat):
        location = str(workdir / f"replica-{uuid.uuid4().hex[:6]}.db")
        rates["state_replica"].append(replica_in_process(broker, topic, count, location))
        rates["bare"].append(bare_consume(broker, topic, count, decode_too=False))
        rates["bare_decode"].append(bare_consume(broker, topic, count, decode_too=True))
        loads.append(load_now())
        log(f"[{store.backend}] (c) round {round_no + 1}/{repeat}: {rates}; load {loads[-1]}")
    return {
        "messages": count,
        "rates": {k: Summary.of(v).as_dict() for k, v in rates.items()},
        "ratio_replica_to_bare": Summary.of(
            paired_ratios(rates["state_replica"], rates["bare"])
        ).as_dict(),
        "load": loads,
    }


# --- (d) scale: consumer processes, relay lag during a campaign -----------------------------


def replica_processes(
    store: Store, broker: KafkaBroker, topic: str, count: int, processes: int, workdir: Path
) -> dict[str, Any]:
    """``processes`` times `secstate consume state-replica` in one group, one SQLite store."""
    home = workdir / f"consumers-{processes}-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    settings = with_kafka(store.settings, broker.bootstrap, topic)
    env = child_env(
        settings,
        SECSTATE_HOME=str(home),
        SECSTATE_CONSUMER_GROUP_PREFIX=f"bench{uuid.uuid4().hex[:6]}",
        SECSTATE_CONSUMER_SESSION_TIMEOUT_MS="6000",
        SECSTATE_CONSUMER_HEARTBEAT_INTERVAL_MS="1000",
        SECSTATE_CONSUMER_FETCH_MAX_WAIT_MS="100",
    )
    env.pop("SECSTATE_DATABASE_URL", None)
    location = str(home / "consumers" / "state-replica.sqlite3")
    with contextlib.ExitStack() as stack:
        for p in range(processes):
            stack.enter_context(
                child(["consume", "state-replica"], env, workdir / f"replica-{processes}-{p}.log")
            )
        wait_until("the replica processes", lambda: handled_count(location) >= count, 900, 0.25)
    handled, span = handled_span(location)
    with contextlib.closing(sqlite3.connect(location)) as conn:
        per_partition = dict(
            conn.execute(
                "SELECT kafka_partition, count(*) FROM consumer_handled GROUP BY kafka_partition"
            ).fetchall()
        )
    return {
        "processes": processes,
        "handled": handled,
        "rate": (handled - 1) / span,
        "seconds": span,
        "per_partition": per_partition,
        "load": load_now(),
    }


def relay_lag(backend: str, broker: KafkaBroker, workdir: Path, users: int) -> dict[str, Any]:
    """`secstate relay run` following while a campaign marks ``users`` users."""
    with fresh_store(backend) as store:
        ledger = store.ledger()
        topic = broker.create_topic(store.settings.events_topic_partitions, prefix="lag")
        settings = with_kafka(store.settings, broker.bootstrap, topic)
        log(f"[{backend}] (d) preparing {users} users; load {load_now()}")
        prepare_users(ledger, users, passwords=False, prefix="lag")
        prepared = head_of(ledger)
        relay_args = ["relay", "run", "--poll-interval", "0.05"]
        with child(relay_args, child_env(settings), workdir / "relay-lag.log"):
            started = time.perf_counter()
            wait_until(
                "the relay's catch-up", lambda: relay_position(settings) >= prepared, 900, 0.25
            )
            catch_up_s = time.perf_counter() - started
            log(f"[{backend}] (d) relay caught up {prepared} in {catch_up_s:.1f}s; campaign")
            samples: list[tuple[float, int, int]] = []
            done = threading.Event()
            result: dict[str, Any] = {}

            def run_campaign() -> None:
                result["marked"], result["seconds"] = campaign(ledger, "bench-lag")
                done.set()

            thread = threading.Thread(target=run_campaign)
            started = time.perf_counter()
            thread.start()
            target = prepared + users
            while True:
                head, position = head_of(ledger), relay_position(settings)
                samples.append((time.perf_counter() - started, head, position))
                if done.is_set() and position >= target:
                    break
                if time.perf_counter() - started > 900:
                    raise TimeoutError("the relay did not catch up within 900 s")
                time.sleep(0.25)
            thread.join()
        drained_s = samples[-1][0]
        peak = max(h - p for _, h, p in samples)
    return {
        "users": users,
        "prepared_events": prepared,
        "relay_catch_up_of_prepared_s": catch_up_s,
        "relay_catch_up_rate": prepared / catch_up_s,
        "campaign_events": result["marked"],
        "campaign_s": result["seconds"],
        "campaign_rate": result["marked"] / result["seconds"],
        "relay_done_after_s": drained_s,
        "relay_rate_during": result["marked"] / drained_s,
        "peak_lag": peak,
        "lag_after_campaign_s": drained_s - result["seconds"],
        "samples": samples,
        "load": load_now(),
    }


def bench_scale(
    store: Store, broker: KafkaBroker, workdir: Path, campaign_users: int, rounds: int
) -> dict[str, Any]:
    topic, count = fill_topic(store, broker, 4, "relay_d")
    log(f"[{store.backend}] (d) {count} messages on 4 partitions; load {load_now()}")
    runs = [
        replica_processes(store, broker, topic, count, n, workdir)
        for _ in range(rounds)
        for n in (1, 2)
    ]
    for run in runs:
        log(f"[{store.backend}] (d) {run['processes']} process(es): {run['rate']:,.0f}/s")
    lag = relay_lag(store.backend, broker, workdir, campaign_users)
    return {"messages": count, "replica_processes": runs, "relay_lag": lag}


# --- report ---------------------------------------------------------------------------------


def med(summary: dict[str, Any], digits: int = 0) -> str:
    return fmt_num(summary["median"], digits)


def span(summary: dict[str, Any], digits: int = 0) -> str:
    return f"{fmt_num(summary['min'], digits)}-{fmt_num(summary['max'], digits)}"


def report(results: dict[str, Any]) -> None:
    for backend, parts in results["backends"].items():
        a = parts.get("relay")
        if a:
            rows = [
                [case, med(s), span(s), med(a["cpu_us_per_event"][case], 1)]
                for case, s in a["rates"].items()
            ]
            print_table(
                f"(a) {backend}: relay vs bare kafka-python, {a['events']:,} events, "
                f"{a['repeat']} rounds (events/s; CPU µs/event of this process)",
                ["case", "median", "range", "CPU µs/event"],
                rows,
            )
            ratio = a["ratio_relay_to_bare"]
            print(
                f"\nrelay/bare {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}); "
                f"relay/bare flushed per batch {a['ratio_relay_to_bare_batched']['median']:.2f}; "
                f"campaign {med(a['campaign_events_per_s'])} events/s; load {a['load']}"
            )
        lat = parts.get("latency")
        if lat:
            print_table(
                f"(b) {backend}: command to reactions handling",
                [
                    "relay poll / fetch_max_wait",
                    "rate",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "load",
                ],
                [
                    [
                        f"{x['relay_poll_interval_s']} s / {x['fetch_max_wait_ms']} ms",
                        fmt_num(x["achieved_rate"]),
                        fmt_num(x["p50_ms"]),
                        fmt_num(x["p90_ms"]),
                        fmt_num(x["p99_ms"]),
                        fmt_num(x["max_ms"]),
                        " → ".join(x["load"]),
                    ]
                    for x in lat
                ],
            )
        c = parts.get("consumers")
        if c:
            print_table(
                f"(c) {backend}: consumers, {c['messages']:,} messages (messages/s)",
                ["case", "median", "range"],
                [[k, med(s), span(s)] for k, s in c["rates"].items()],
            )
            print(
                f"\nstate-replica/bare {c['ratio_replica_to_bare']['median']:.3f}; load {c['load']}"
            )
        d = parts.get("scale")
        if d:
            print_table(
                f"(d) {backend}: state-replica processes on 4 partitions, {d['messages']:,}",
                ["processes", "messages/s", "seconds", "per partition", "load"],
                [
                    [
                        r["processes"],
                        fmt_num(r["rate"]),
                        fmt_num(r["seconds"], 1),
                        r["per_partition"],
                        r["load"],
                    ]
                    for r in d["replica_processes"]
                ],
            )
            lag = d["relay_lag"]
            print(
                f"\n(d) campaign of {lag['users']:,} users: {fmt_num(lag['campaign_rate'])} "
                f"events/s ({lag['campaign_s']:.1f} s); relay done {lag['relay_done_after_s']:.1f}"
                f" s after the start ({fmt_num(lag['relay_rate_during'])} events/s), "
                f"{lag['lag_after_campaign_s']:.1f} s after the campaign; peak lag "
                f"{lag['peak_lag']:,}; relay catch-up of the {lag['prepared_events']:,} "
                f"prepared events {fmt_num(lag['relay_catch_up_rate'])}/s; load {lag['load']}"
            )
            rows, next_t = [], 0.0
            for t, head, position in lag["samples"]:
                if t >= next_t:
                    rows.append([f"{t:.1f}", f"{head:,}", f"{position:,}", f"{head - position:,}"])
                    next_t = t + max(1.0, lag["relay_done_after_s"] / 20)
            t, head, position = lag["samples"][-1]
            rows.append([f"{t:.1f}", f"{head:,}", f"{position:,}", f"{head - position:,}"])
            print_table("relay lag over time", ["s", "head", "relay", "lag"], rows)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_kafka",
        description="Issue 8: the Kafka relay and consumers against a real broker.",
    )
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="sqlite")
    parser.add_argument("--events", type=int, default=30_000, help="(a)/(c): events (30,000)")
    parser.add_argument("--repeat", type=int, default=3, help="(a)/(c): rounds (3)")
    parser.add_argument("--rate", type=int, default=1000, help="(b): events/s (1,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="(b): seconds (20)")
    parser.add_argument(
        "--campaign-users", type=int, default=100_000, help="(d): campaign users (100,000)"
    )
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--latency-configs",
        help="(b): POLL_S:FETCH_MS:SHARE,... (relay poll interval, consumer "
        "fetch_max_wait_ms, share of --rate); default: "
        + ",".join(f"{p}:{f}:{r}" for p, f, r in LATENCY_CONFIGS),
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run: seconds, not minutes")
    parser.add_argument("--profile", action="store_true", help="(a): one relay run under cProfile")
    parser.add_argument(
        "--confluent", action="store_true", help="(a): confluent-kafka too (if installed)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.rate, args.seconds = 300, 1, 100, 2.0
        args.campaign_users = 300
    args.only = args.only or list(PARTS)
    if args.latency_configs:
        try:
            args.latency_configs = [
                (float(p), int(f), float(r))
                for p, f, r in (c.split(":") for c in args.latency_configs.split(","))
            ]
        except ValueError:
            parser.error("--latency-configs: POLL_S:FETCH_MS:SHARE,...")
    for name in ("events", "repeat", "rate", "campaign_users"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    if "postgres" in backends and (problem := postgres_problem()):
        log(f"skipping PostgreSQL: {problem}")
        backends.remove("postgres")
    info = machine_info("postgres" in backends)
    info["kafka-python"] = _version("kafka-python")
    info["confluent-kafka"] = _version("confluent-kafka")
    print_machine_info(info)
    results: dict[str, Any] = {"machine": info, "args": vars(args), "backends": {}}
    profile_dir = RESULTS_DIR if args.profile else None
    configs = args.latency_configs or (LATENCY_CONFIGS[2:3] if args.quick else LATENCY_CONFIGS)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "broker")
        try:
            for backend in backends:
                parts: dict[str, Any] = results["backends"].setdefault(backend, {})
                if {"relay", "consumers", "scale"} & set(args.only):
                    with fresh_store(backend) as store:
                        if "relay" in args.only or "consumers" in args.only:
                            if "relay" in args.only:
                                parts["relay"] = bench_relay(
                                    store,
                                    broker,
                                    args.events,
                                    args.repeat,
                                    args.confluent,
                                    profile_dir,
                                )
                            else:
                                prepare_users(store.ledger(), args.events // 4, passwords=True)
                            if "consumers" in args.only:
                                parts["consumers"] = bench_consumers(
                                    store, broker, workdir, min(2, args.repeat)
                                )
                        if "scale" in args.only:
                            if not (set(args.only) & {"relay", "consumers"}):
                                prepare_users(store.ledger(), args.events // 4, passwords=True)
                            parts["scale"] = bench_scale(
                                store, broker, workdir, args.campaign_users, min(2, args.repeat)
                            )
                if "latency" in args.only:
                    parts["latency"] = bench_latency(
                        backend, broker, workdir, args.rate, args.seconds, configs
                    )
        finally:
            broker.close()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load_at_end"] = load_now()
    report(results)
    path = save_results("kafka", results)
    log(f"samples in {path}")
    return 0


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
