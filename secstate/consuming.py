"""secstate's own consumers wired to the settings: their names, databases, groups.

Each consumer has a database of its own: a SQLite file in ``home/consumers`` by default,
or, with ``SECSTATE_CONSUMER_DATABASE_URL``, a PostgreSQL schema of its own
(``<schema>_<name>``, or ``consumer_<name>`` when the URL names none). Its consumer group
is ``<SECSTATE_CONSUMER_GROUP_PREFIX>.<name>``. A consumer never holds application keys:
it reads the public events on the topic, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from consumers import ConsumerApp, ConsumerStore, RunOptions, reactions, state_replica
from domain.errors import SecStateError
from producers.kafka import KafkaConnection
from secstate.bootstrap import ensure_home
from secstate.relaying import kafka_connection
from secstate.settings import Settings
from store.files import private_dir, private_sqlite_file
from store.setup import StoreConfig, ensure_postgres_schema

Builder = Callable[[ConsumerStore, str], ConsumerApp]

CONSUMERS: dict[str, Builder] = {
    reactions.NAME: reactions.build_app,
    state_replica.NAME: state_replica.build_app,
}


class UnknownConsumerError(SecStateError):
    """No consumer of that name ships with secstate."""


def check_consumer(name: str) -> Builder:
    try:
        return CONSUMERS[name]
    except KeyError:
        known = ", ".join(sorted(CONSUMERS))
        raise UnknownConsumerError(f"unknown consumer {name[:60]!r}; known: {known}") from None


def _schema_for(base: str | None, name: str) -> str:
    return f"{base or 'consumer'}_{name.replace('-', '_')}"


def consumer_location(settings: Settings, name: str) -> str:
    """Where consumer ``name`` keeps its database (a path, or a URL with its schema),
    the schema or directory made if missing."""
    if settings.consumer_database_url is None:
        directory = private_dir(ensure_home(settings) / "consumers", "the consumers directory")
        return str(private_sqlite_file(directory / f"{name}.sqlite3"))
    url = urlsplit(settings.consumer_database_url.get_secret_value())
    query = parse_qs(url.query)
    schema = _schema_for(query.get("schema", [None])[0], name)
    query["schema"] = [schema]
    located = urlunsplit(url._replace(query=urlencode(query, doseq=True)))
    from consumers.store import postgres_params

    ensure_postgres_schema(StoreConfig(settings.home, postgres_params(located)))
    return located


def open_consumer(settings: Settings, name: str) -> ConsumerApp:
    """Consumer ``name`` on its own database."""
    build = check_consumer(name)
    return build(ConsumerStore.open(consumer_location(settings, name)), name)


def group_id(settings: Settings, name: str) -> str:
    return f"{settings.consumer_group_prefix}.{name}"


def run_options(settings: Settings) -> RunOptions:
    return RunOptions(
        dead_letter_topic=settings.dead_letters,
        dead_letter_replication_factor=settings.events_topic_replication,
        max_attempts=settings.consumer_max_attempts,
        consumer_config={
            "session_timeout_ms": settings.consumer_session_timeout_ms,
            "heartbeat_interval_ms": settings.consumer_heartbeat_interval_ms,
            "fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
        },
    )


def connection_for(settings: Settings, name: str) -> KafkaConnection:
    """The Kafka client settings of consumer ``name`` (no keys: only brokers)."""
    return kafka_connection(settings, f"consumer-{name}")


__all__ = [
    "CONSUMERS",
    "UnknownConsumerError",
    "check_consumer",
    "connection_for",
    "consumer_location",
    "group_id",
    "open_consumer",
    "run_options",
]
