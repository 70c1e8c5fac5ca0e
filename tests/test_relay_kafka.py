"""The Kafka relay against a real Kafka-protocol broker, on SQLite and PostgreSQL stores:
what it publishes, that nothing is lost or reordered when it or the broker dies, and that
nothing secret leaves.

Counting what arrived is done by reading each topic from the beginning (never from the
broker's end offsets, which the test broker gets wrong).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import START
from test_relay_sink import make_history

from contracts.registry import parse_value
from domain.context import RequestContext, SteppedClock
from domain.ledger import Ledger
from secstate.bootstrap import build_ledger, build_reader
from secstate.followers import follower_report
from secstate.runner import Runner
from secstate.settings import Settings

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord
    from kafka_broker import DurableKafkaBroker, KafkaBroker

REPO = Path(__file__).resolve().parent.parent
SECSTATE = str(Path(sys.executable).with_name("secstate"))  # the installed command


def with_kafka(settings: Settings, bootstrap: str, topic: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap_servers": bootstrap, "events_topic": topic})


def relay_once(settings: Settings, reader: Any) -> int:
    with Runner(settings, reader, ["relay"], batch_size=500) as runner:
        report = runner.run(once=True)
    (run,) = report.followers
    assert run.error is None, run.error
    return run.position


def hdr(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


@pytest.fixture
def kafka_settings(settings: Settings, kafka_broker: KafkaBroker) -> Settings:
    return with_kafka(settings, kafka_broker.bootstrap, kafka_broker.create_topic(3))


def test_every_event_is_published_once_as_a_cloudevent_in_per_account_order(
    ledger: Ledger, ctx: RequestContext, kafka_settings: Settings, kafka_broker: KafkaBroker
) -> None:
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

    # given a history across accounts, users and a refused attempt
    make_history(ledger, ctx)
    head = ledger.log_store.head()
    count = sum(len(rows) for rows in ledger.log_store.scan())
    # when the relay runs up to the head
    assert relay_once(kafka_settings, ledger) == head
    records = kafka_broker.read(kafka_settings.events_topic, count)
    # then each event arrived exactly once
    assert len(records) == count
    ids = [hdr(r)["ce_id"] for r in records]
    assert len(set(ids)) == count
    # and an independent CloudEvents implementation reads every message
    for record in records:
        event = from_binary_event(
            KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        )
        attributes = event.get_attributes()
        for name in ("id", "source", "type", "time", "subject", "specversion"):
            assert attributes[name], name
        assert attributes["specversion"] == "1.0"
        assert str(attributes["type"]).startswith("io.secstate.")
    # and each value validates into its versioned model
    for record in records:
        parsed = parse_value(hdr(record)["ce_type"], record.value)
        assert str(parsed.aggregate_id) == hdr(record)["ce_id"].split(":")[0]
    # and within a partition, each key's sequence runs 1, 2, 3, ... in offset order
    by_key: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(record.key, []).append(int(hdr(record)["ce_accountseq"]))
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_key.values())
    # and each key lives on exactly one partition
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())
    # and the status says it is caught up
    status = follower_report(kafka_settings, ledger, "relay")
    assert (status.state, status.position, status.lag) == ("caught up", head, 0)


def test_a_missing_topic_is_refused_clearly_and_nothing_is_published_or_advanced(
    ledger: Ledger, ctx: RequestContext, settings: Settings, kafka_broker: KafkaBroker
) -> None:
    # given events and a topic name nobody created
    make_history(ledger, ctx)
    missing = with_kafka(settings, kafka_broker.bootstrap, "never-created-topic")
    # when the relay runs once
    with Runner(missing, ledger, ["relay"]) as runner:
        report = runner.run(once=True)
    # then it failed, naming the topic and how to create it, and kept position 0
    (run,) = report.followers
    assert run.error is not None
    assert "never-created-topic" in run.error
    assert "relay create-topic" in run.error
    assert follower_report(missing, ledger, "relay").position == 0
    # and the broker did not create it behind our back
    assert "never-created-topic" not in set(kafka_broker.admin().list_topics())


# --- processes -----------------------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env["SECSTATE_HOME"] = str(settings.home)
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    assert settings.kafka_bootstrap_servers is not None
    env["SECSTATE_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
    env["SECSTATE_EVENTS_TOPIC"] = settings.events_topic
    env["SECSTATE_KEYS"] = ""  # the relay must not need the key ring
    env.update(extra)
    return env


def relay_process(
    settings: Settings, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [SECSTATE, "relay", "run", "--batch-size", "200", *args],
            cwd=REPO,
            env=child_env(settings, **(env or {})),
            stdout=sink,
            stderr=sink,
        )


def bulk_history(settings: Settings, accounts: int) -> int:
    from test_follower_crash import write_bulk

    ledger = build_ledger(settings, clock=SteppedClock(START))
    try:
        write_bulk(ledger, accounts)
        return sum(len(rows) for rows in ledger.log_store.scan())
    finally:
        ledger.close()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def assert_complete_and_ordered(records: list[ConsumerRecord], count: int) -> None:
    """After dropping duplicates by ce_id: every event once, each key's sequence 1..n in
    offset order, duplicates identical to their first copy."""
    first: dict[str, ConsumerRecord] = {}
    by_key: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        ce_id = hdr(record)["ce_id"]
        if ce_id in first:
            assert record.value == first[ce_id].value
            assert hdr(record) == hdr(first[ce_id])
            continue
        first[ce_id] = record
        by_key.setdefault(record.key, []).append(int(hdr(record)["ce_accountseq"]))
    assert len(first) == count
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_key.values())


@pytest.fixture
def killable_store(settings: Settings, kafka_broker: KafkaBroker) -> Iterator[Settings]:
    return with_kafka(settings, kafka_broker.bootstrap, kafka_broker.create_topic(4))


def test_a_relay_killed_mid_stream_resumes_and_every_event_arrives_in_order(
    killable_store: Settings, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    # given ~6,000 events
    count = bulk_history(killable_store, 60)
    topic = killable_store.events_topic
    log = tmp_path / "relay.log"
    # when a relay is killed with SIGKILL once part of the log is published
    relay = relay_process(killable_store, log)
    try:
        kafka_broker.read(topic, count // 4, timeout_s=120)
    finally:
        relay.send_signal(signal.SIGKILL)
        relay.wait(30)
    assert relay.returncode == -signal.SIGKILL
    # and a new relay runs to the head
    again = relay_process(killable_store, log, "--once")
    assert again.wait(180) == 0, log.read_text(errors="replace")
    # then, duplicates dropped, every event arrived once and in per-account order
    records = kafka_broker.read(topic, count, timeout_s=60)
    assert_complete_and_ordered(records, count)


def test_the_broker_stopped_mid_stream_and_restarted_loses_nothing(
    settings: Settings, durable_kafka_broker: DurableKafkaBroker, tmp_path: Path
) -> None:
    # given ~4,000 events and a relay following the log into a durable broker
    store = with_kafka(
        settings, durable_kafka_broker.bootstrap, durable_kafka_broker.create_topic(2)
    )
    count = bulk_history(store, 40)
    log = tmp_path / "relay.log"
    # (one that gives up on an acknowledgement after 2 s, so the outage outlasts it)
    relay = relay_process(store, log, env={"SECSTATE_RELAY_DELIVERY_TIMEOUT_MS": "2000"})
    try:
        durable_kafka_broker.read(store.events_topic, count // 5, timeout_s=120)
        # when the broker dies and stays down a while
        durable_kafka_broker.stop(kill=True)
        time.sleep(8)
        assert relay.poll() is None, log.read_text(errors="replace")
        # and comes back
        durable_kafka_broker.start()
        # then the relay catches up to the head without being restarted
        wait_until(
            lambda: follower_report(store, build_reader(store), "relay").lag == 0,
            180,
            "the relay to catch up",
        )
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(60)
    assert relay.returncode == 0, log.read_text(errors="replace")
    records = durable_kafka_broker.read(store.events_topic, count, timeout_s=60)
    assert_complete_and_ordered(records, count)
    # and it said so in a few lines, not one per retry
    text = log.read_text(errors="replace")
    assert "recovered" in text
    assert text.count("retrying") < 10


def test_no_secret_or_ciphertext_is_in_any_published_message(
    ledger: Ledger,
    ctx: RequestContext,
    clock: SteppedClock,
    kafka_settings: Settings,
    kafka_broker: KafkaBroker,
) -> None:
    from test_secret_leak import run_scenario

    # given a scenario that handles every kind of secret
    scenario = run_scenario(ledger, ctx, clock)
    count = sum(len(rows) for rows in ledger.log_store.scan())
    # when the relay publishes it all
    relay_once(kafka_settings, ledger)
    records = kafka_broker.read(kafka_settings.events_topic, count)
    dump = b"\n".join(
        b"".join([r.key or b"", r.value or b"", *(k.encode() + v for k, v in r.headers)])
        for r in records
    )
    # then the dump shows the public values (the search can see) ...
    stored_forms = {"argon2 PHC prefix", "sealed value prefix"}  # how the store keeps secrets
    public = {k: v for k, v in scenario.public.items() if k not in stored_forms}
    assert public
    assert [label for label, value in public.items() if value not in dump] == []
    # ... and no secret in any form, no password hash and no sealed value
    leaked = [label for label, secret in scenario.secrets.items() if secret in dump]
    assert leaked == []
    assert [label for label in stored_forms if scenario.public[label] in dump] == []
    # and no field that holds a hash or ciphertext in the store is in any value
    values = [json.loads(r.value) for r in records]
    secret_names = {
        "password_hash",
        "secret_hash",
        "code_hashes",
        "sealed_seed",
        "sealed_private_key",
    }
    assert all(not (secret_names & set(v["data"])) for v in values)


def test_the_relay_partitions_every_key_as_kafka_pythons_default_partitioner() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    from producers.kafka import _keyed_partitioner

    class Cluster:
        def __init__(self, partitions: int) -> None:
            self.partitions = set(range(partitions))

        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return self.partitions

        def available_partitions_for_topic(self, topic: str) -> set[int]:
            return self.partitions

    # given the relay's partitioner and kafka-python's default one
    ours, default = _keyed_partitioner(), DefaultPartitioner()
    keys = [str(uuid.uuid4()).encode() for _ in range(300)]
    # when each key is partitioned twice (the second time remembered), for several counts
    for count in (1, 3, 4, 6, 7):
        cluster = Cluster(count)
        for key in keys + keys:
            # then every key goes where kafka-python (and the Java client) would put it
            expected = default.partition("t", key, key, b"v", b"v", cluster)
            assert ours.partition("t", key, key, b"v", b"v", cluster) == expected
