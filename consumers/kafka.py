"""kafka-python for consumers: how to reach the brokers, the dead-letter topic (made
deliberately, never by producing to it) and its publisher.

A connection is anything with ``client_options()`` (secstate's
``producers.kafka.KafkaConnection``), or ``Brokers`` here, or a bootstrap string.
kafka-python is imported only when a client is made.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ClientOptions(Protocol):
    def client_options(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Brokers:
    """The bootstrap servers and client settings (security options go in ``extra``)."""

    bootstrap_servers: tuple[str, ...]
    client_id: str = "secstate-consumer"
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            **self.extra,
        }


ConnectionLike = ClientOptions | str | Sequence[str]


def as_connection(connection: ConnectionLike) -> ClientOptions:
    """A connection from ``"host:9092,host2:9092"``, a list of servers, or one as it is."""
    if isinstance(connection, str):
        return Brokers(tuple(s.strip() for s in connection.split(",") if s.strip()))
    if isinstance(connection, ClientOptions):
        return connection
    return Brokers(tuple(connection))


class DeadLetterError(RuntimeError):
    """The dead-letter topic is missing or did not acknowledge a message."""


@contextlib.contextmanager
def quiet_kafka_import() -> Iterator[None]:
    """kafka-python 3 warns ~200 times about importlib.resources on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def ensure_topic(
    connection: ClientOptions, name: str, *, partitions: int = 1, replication_factor: int = 1
) -> bool:
    """Create the topic ``name`` unless it exists (True if it was made now)."""
    with quiet_kafka_import():
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError
    try:
        admin = KafkaAdminClient(**connection.client_options())
    except KafkaError as e:
        raise DeadLetterError(f"cannot reach Kafka to create {name!r}: {_error(e)}") from e
    try:
        if name in set(admin.list_topics()):
            return False
        admin.create_topics([NewTopic(name, partitions, replication_factor)])
        return True
    except TopicAlreadyExistsError:
        return False
    except KafkaError as e:
        raise DeadLetterError(f"cannot create topic {name!r}: {_error(e)}") from e
    finally:
        admin.close()


class DeadLetterPublisher:
    """Sends a message to the dead-letter topic and waits for the broker's ack."""

    def __init__(self, connection: ClientOptions, topic: str, *, timeout_s: float = 30.0) -> None:
        with quiet_kafka_import():
            from kafka import KafkaProducer
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = KafkaProducer(
            **connection.client_options(),
            acks="all",
            enable_idempotence=True,
            allow_auto_create_topics=False,
            linger_ms=0,
            max_block_ms=int(timeout_s * 1000),
        )

    def publish(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> tuple[int, int]:
        """Send and wait; the (partition, offset) it was written at."""
        with quiet_kafka_import():
            from kafka.errors import KafkaError
        try:
            future = self._producer.send(self.topic, key=key, value=value, headers=headers)
            metadata = future.get(timeout=self.timeout_s)
        except KafkaError as e:
            raise DeadLetterError(
                f"the dead-letter topic {self.topic!r} did not take the message: {_error(e)}"
            ) from e
        return int(metadata.partition), int(metadata.offset)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.close(timeout=5)


__all__ = [
    "Brokers",
    "ClientOptions",
    "ConnectionLike",
    "DeadLetterError",
    "DeadLetterPublisher",
    "as_connection",
    "ensure_topic",
    "quiet_kafka_import",
]
