"""The test broker itself: what later Kafka tests rely on, checked against the real thing.

Records are produced as the relay will send them (acks=all, idempotence, lz4, keys and
headers) and read back from a fresh topic from the beginning, counted (Tansu's end
offsets are wrong, so nothing here reads them). The durable broker keeps records and a
group's committed offsets across SIGKILL and restart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka_broker import (
    FAST_GROUP_JOIN,
    DurableKafkaBroker,
    KafkaBroker,
    port_is_free,
)

pytestmark = pytest.mark.kafka


def _producer(broker: KafkaBroker) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=5,
    )


def _records(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (
            f"account-{i % 7}".encode(),
            f'{{"n": {i}}}'.encode(),
            [("ce_id", f"id-{i}".encode()), ("ce_type", b"io.secstate.test.v1")],
        )
        for i in range(n)
    ]


def _produce(broker: KafkaBroker, topic: str, n: int) -> list[tuple[bytes, bytes, Any]]:
    sent = _records(n)
    producer = _producer(broker)
    try:
        futures = [
            producer.send(topic, key=key, value=value, headers=headers)
            for key, value, headers in sent
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)  # raises if the broker did not acknowledge it
    finally:
        producer.close(timeout=10)
    return sent


@pytest.fixture
def group_consumer() -> Iterator[list[KafkaConsumer]]:
    """Consumers a test opens, closed after it (a connected client delays SIGTERM ~5 s)."""
    opened: list[KafkaConsumer] = []
    yield opened
    for consumer in opened:
        consumer.close()


def _consume_group(
    opened: list[KafkaConsumer], broker: KafkaBroker, topic: str, group: str, count: int
) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=count,
        **FAST_GROUP_JOIN,
    )
    opened.append(consumer)
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=count - len(got)).values():
            got.extend(batch)
    return got


def test_produces_and_reads_back_keys_headers_and_values(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(3)
    sent = _produce(kafka_broker, topic, 200)

    got = kafka_broker.read(topic, 200)

    assert len(got) == 200
    assert sorted((r.key, r.value, r.headers) for r in got) == sorted(sent)
    # one key, one partition, in the order sent
    by_key: dict[bytes, set[int]] = {}
    for r in got:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert len({r.partition for r in got}) > 1
    for key in by_key:
        values = [r.value for r in sorted(got, key=lambda r: r.offset) if r.key == key]
        assert values == [v for k, v, _ in sent if k == key]


def test_topics_are_fresh_and_only_made_on_purpose(kafka_broker: KafkaBroker) -> None:
    a = kafka_broker.create_topic(2, prefix="fresh")
    b = kafka_broker.create_topic(2, prefix="fresh")
    assert a != b
    assert a.startswith("fresh-")
    topics = kafka_broker.admin().list_topics()
    assert {a, b} <= set(topics)
    assert len(kafka_broker.admin().describe_topics([a])[0]["partitions"]) == 2


def test_a_group_joins_fast_and_commits(
    kafka_broker: KafkaBroker, group_consumer: list[KafkaConsumer]
) -> None:
    topic = kafka_broker.create_topic(2)
    _produce(kafka_broker, topic, 20)
    group = f"g-{uuid.uuid4().hex[:8]}"

    started = time.monotonic()
    got = _consume_group(group_consumer, kafka_broker, topic, group, 20)
    joined_and_read = time.monotonic() - started
    group_consumer[0].commit()

    assert len(got) == 20
    assert joined_and_read < 15, joined_and_read  # ~3 s with FAST_GROUP_JOIN; 23 s without
    committed = kafka_broker.admin().list_group_offsets(group)[group]
    assert sum(o.offset for o in committed.values()) == 20


def test_durable_broker_keeps_records_and_offsets_across_sigkill(
    durable_kafka_broker: DurableKafkaBroker, group_consumer: list[KafkaConsumer]
) -> None:
    broker = durable_kafka_broker
    topic = broker.create_topic(3)
    sent = _produce(broker, topic, 150)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consume_group(group_consumer, broker, topic, group, 60)
    assert len(first) == 60
    group_consumer[0].commit()
    group_consumer.pop().close()
    committed = broker.admin().list_group_offsets(group)[group]
    port, pid = broker.port, broker.pid

    broker.stop(kill=True)
    assert not broker.running
    broker.start()

    assert (broker.port, broker.running) == (port, True)
    assert broker.pid != pid
    assert topic in broker.admin().list_topics()
    assert broker.admin().list_group_offsets(group)[group] == committed
    everything = broker.read(topic, 150)
    assert sorted((r.key, r.value, r.headers) for r in everything) == sorted(sent)
    rest = _consume_group(group_consumer, broker, topic, group, 90)
    assert len(rest) == 90
    seen = [(r.partition, r.offset) for r in first + rest]
    assert len(set(seen)) == 150  # resumed at the committed offsets: nothing twice


def test_durable_broker_takes_new_writes_after_sigterm_restart(
    durable_kafka_broker: DurableKafkaBroker,
) -> None:
    broker = durable_kafka_broker
    topic = broker.create_topic(1)
    _produce(broker, topic, 10)

    broker.restart()
    _produce(broker, topic, 10)

    got = broker.read(topic, 20)
    assert len(got) == 20
    assert [r.offset for r in got] == list(range(20))
    assert broker.last_stop_s is not None
    assert broker.last_stop_s < 2, broker.last_stop_s  # no client was left connected


def test_stop_frees_the_port_and_start_takes_it_again(
    durable_kafka_broker: DurableKafkaBroker,
) -> None:
    broker = durable_kafka_broker
    port = broker.port
    assert not port_is_free(port)
    broker.stop()
    assert port_is_free(port)
    broker.stop()  # stopping a stopped broker is harmless
    broker.start()
    assert broker.port == port
    assert not port_is_free(port)


def test_a_taken_port_is_refused_on_restart(durable_kafka_broker: DurableKafkaBroker) -> None:
    import socket

    from kafka_broker import BrokerUnavailable

    broker = durable_kafka_broker
    broker.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", broker.port))
        squatter.listen()
        with pytest.raises(BrokerUnavailable, match="taken"):
            broker.start()
    broker.start()
    assert broker.running
