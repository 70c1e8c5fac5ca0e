"""The Kafka relay wired to the settings: the follower ``relay``, its topic, its client.

The relay is opened from a ``LedgerReader`` (no key ring), keeps its position and its
numbering in its own view database, and makes its Kafka producer only when it first has
something to publish, so it starts (and ``project status`` reads it) while the broker
is down, and a failed producer is simply replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.reader import LedgerReader
from producers.kafka import KafkaConnection, KafkaPublisher, ProducerTuning, TopicSpec
from producers.messages import MessageBuilder
from producers.publisher import Publisher
from producers.relay import RelaySink
from projections.follower import Follower, OpenedFollower
from projections.source import LogSource
from projections.status import ViewError, read_last_error, read_position
from secstate.bootstrap import open_view_db
from secstate.settings import Settings

RELAY = "relay"


def kafka_connection(settings: Settings, role: str) -> KafkaConnection:
    """How this installation reaches Kafka; ``role`` names the client (``relay``, ...)."""
    password = settings.kafka_sasl_password
    return KafkaConnection(
        bootstrap_servers=settings.kafka_servers(),
        client_id=f"{settings.kafka_client_id}-{role}",
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_plain_username=settings.kafka_sasl_username,
        sasl_plain_password=password.get_secret_value() if password else None,
        ssl_cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
    )


def events_topic(settings: Settings) -> TopicSpec:
    return TopicSpec(
        settings.events_topic,
        partitions=settings.events_topic_partitions,
        replication_factor=settings.events_topic_replication,
    )


def producer_tuning(settings: Settings) -> ProducerTuning:
    return ProducerTuning(
        linger_ms=settings.relay_linger_ms,
        batch_size=settings.relay_batch_bytes,
        delivery_timeout_ms=settings.relay_delivery_timeout_ms,
        # kafka-python wants delivery >= linger + request (the settings guarantee room)
        request_timeout_ms=min(
            15_000, settings.relay_delivery_timeout_ms - settings.relay_linger_ms
        ),
        flush_timeout_s=settings.relay_delivery_timeout_ms / 1000 + 5,
    )


@dataclass(frozen=True)
class RelayFollowerKind:
    """The follower that publishes every event to the events topic."""

    name: str = RELAY

    def open(self, settings: Settings, reader: LedgerReader, batch_size: int) -> OpenedFollower:
        connection = kafka_connection(settings, self.name)
        topic = settings.events_topic
        tuning = producer_tuning(settings)

        def connect() -> Publisher:
            return KafkaPublisher(connection, topic, tuning)

        db = open_view_db(settings, self.name)
        try:
            sink = RelaySink(self.name, db, MessageBuilder(settings.events_source), connect)
        except BaseException:
            db.close()
            raise

        def close() -> None:
            try:
                sink.close()
            finally:
                db.close()

        return OpenedFollower(Follower(LogSource.of(reader), sink, batch_size), close)

    def stored(self, settings: Settings) -> tuple[int | None, ViewError | None]:
        db = open_view_db(settings, self.name)
        try:
            return read_position(db, self.name), read_last_error(db, self.name)
        finally:
            db.close()
