"""The publisher on Apache Kafka, with kafka-python: idempotent, ``acks=all``, lz4.

Topics are never created by producing to them (``allow_auto_create_topics`` is off):
``create_topic`` makes one deliberately, with its partition count and replication
factor, and the publisher refuses to start on a topic that does not exist.

kafka-python is imported only here, and only when a publisher or admin is made.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from producers.messages import OutgoingMessage
from producers.publisher import PublishError, TopicMissingError


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the brokers (the same for the relay, the admin and consumers)."""

    bootstrap_servers: tuple[str, ...]
    client_id: str = "secstate"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options


@dataclass(frozen=True)
class TopicSpec:
    """A topic as secstate creates it."""

    name: str
    partitions: int = 6
    replication_factor: int = 1
    retention_ms: int | None = None  # None: the broker's default


@dataclass(frozen=True)
class ProducerTuning:
    """Batching and time limits (measured in docs/benchmarks.md)."""

    linger_ms: int = 5
    batch_size: int = 256 * 1024
    compression_type: str = "lz4"
    request_timeout_ms: int = 15_000
    delivery_timeout_ms: int = 30_000
    max_block_ms: int = 10_000
    flush_timeout_s: float = 60.0


@contextmanager
def quiet_kafka_import() -> Iterator[None]:
    """kafka-python 3 warns ~200 times about importlib.resources on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _kafka_error(error: BaseException) -> str:
    """``Type: message``, once (kafka-python's errors already start with their type)."""
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def topic_names(connection: KafkaConnection) -> set[str]:
    """The topics the cluster has (PublishError if it cannot be reached)."""
    with quiet_kafka_import():
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError
    try:
        admin = KafkaAdminClient(**connection.client_options())
    except KafkaError as e:
        raise PublishError(
            f"cannot reach Kafka at {_servers(connection)}: {_kafka_error(e)}"
        ) from e
    try:
        return set(admin.list_topics())
    except KafkaError as e:
        raise PublishError(f"cannot list Kafka topics: {_kafka_error(e)}") from e
    finally:
        admin.close()


def create_topic(connection: KafkaConnection, spec: TopicSpec) -> bool:
    """Create ``spec``'s topic; False if it exists already (nothing is changed then)."""
    with quiet_kafka_import():
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError
    try:
        admin = KafkaAdminClient(**connection.client_options())
    except KafkaError as e:
        raise PublishError(
            f"cannot reach Kafka at {_servers(connection)}: {_kafka_error(e)}"
        ) from e
    configs = {} if spec.retention_ms is None else {"retention.ms": str(spec.retention_ms)}
    try:
        if spec.name in set(admin.list_topics()):
            return False
        admin.create_topics(
            [NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=configs)]
        )
        return True
    except TopicAlreadyExistsError:
        return False
    except KafkaError as e:
        raise PublishError(f"cannot create topic {spec.name!r}: {_kafka_error(e)}") from e
    finally:
        admin.close()


def _servers(connection: KafkaConnection) -> str:
    return ",".join(connection.bootstrap_servers)


def _keyed_partitioner() -> Any:
    """kafka-python's default partitioner (murmur2 of the key, as the Java client), with
    each key's partition remembered: an account's events all carry its key, and murmur2
    in pure Python is a tenth of the relay's time per message (docs/benchmarks.md)."""
    from kafka.partitioner.default import DefaultPartitioner

    class KeyedPartitioner(DefaultPartitioner):  # type: ignore[misc]
        LIMIT = 100_000  # keys remembered (~100 bytes each), then forgotten at once

        def __init__(self) -> None:
            super().__init__()
            self._known: dict[tuple[str, bytes, int], int] = {}

        def partition(
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: Any,
            cluster: Any,
        ) -> int:
            partitions = cluster.partitions_for_topic(topic)
            if serialized_key is None or not partitions:
                return int(
                    super().partition(topic, key, serialized_key, value, serialized_value, cluster)
                )
            known = (topic, bytes(serialized_key), len(partitions))
            found = self._known.get(known)
            if found is None or found not in partitions:
                if len(self._known) >= self.LIMIT:
                    self._known.clear()
                found = self._known[known] = int(
                    super().partition(topic, key, serialized_key, value, serialized_value, cluster)
                )
            return found

    return KeyedPartitioner()


class KafkaPublisher:
    """Publishes to one existing topic and waits for every acknowledgement."""

    def __init__(
        self, connection: KafkaConnection, topic: str, tuning: ProducerTuning | None = None
    ) -> None:
        self.topic = topic
        self.tuning = tuning or ProducerTuning()
        if topic not in topic_names(connection):
            raise TopicMissingError(
                f"Kafka topic {topic!r} does not exist; create it with "
                "`secstate relay create-topic` (topics are never created implicitly)"
            )
        with quiet_kafka_import():
            from kafka import KafkaProducer
            from kafka.errors import KafkaError
        t = self.tuning
        try:
            self._producer = KafkaProducer(
                **connection.client_options(),
                acks="all",
                enable_idempotence=True,
                allow_auto_create_topics=False,
                compression_type=t.compression_type,
                linger_ms=t.linger_ms,
                batch_size=t.batch_size,
                request_timeout_ms=t.request_timeout_ms,
                delivery_timeout_ms=t.delivery_timeout_ms,
                max_block_ms=t.max_block_ms,
                partitioner=_keyed_partitioner(),
            )
        except KafkaError as e:
            raise PublishError(f"cannot start a Kafka producer: {_kafka_error(e)}") from e

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        with quiet_kafka_import():
            from kafka.errors import KafkaError
        producer = self._producer
        try:
            futures = [
                producer.send(self.topic, key=m.key, value=m.value, headers=m.headers)
                for m in messages
            ]
            producer.flush(timeout=self.tuning.flush_timeout_s)
        except KafkaError as e:
            raise PublishError(f"publishing to {self.topic!r} failed: {_kafka_error(e)}") from e
        for message, future in zip(messages, futures, strict=True):
            if not future.is_done:
                raise PublishError(
                    f"the broker did not acknowledge position {message.position} in time"
                )
            if future.failed():
                error = future.exception
                raise PublishError(
                    f"the broker refused position {message.position}: {_kafka_error(error)}"
                ) from error

    def close(self) -> None:
        producer = self._producer
        try:
            producer.close(timeout=5)
        except Exception:
            # close() flushes first and gives up when records are still undelivered (the
            # broker is gone): stop its sender thread and mark it closed, or the thread
            # lives on and the garbage collector's close() complains once more.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                with contextlib.suppress(Exception):
                    sender.force_close()
            producer._closed = True
