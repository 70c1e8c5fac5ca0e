"""What the consumer tests share: a consumer store on SQLite or PostgreSQL, publishing
messages as the relay does, and reading a topic back."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import POSTGRES_URL

from consumers.testing import Message


def store_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh consumer database: a SQLite file, or a PostgreSQL schema of the test."""
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return f"{POSTGRES_URL}?schema={schema}"
    return str(tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.db")


def publish(bootstrap: str, topic: str, messages: Iterable[Message]) -> None:
    """Send ``messages`` as the relay does (key = partition key, acks=all) and wait."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(topic, key=m.key, value=m.value, headers=m.headers) for m in messages
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=5)


def header(record: object, name: str) -> str | None:
    for key, value in getattr(record, "headers", None) or []:
        if key == name:
            return bytes(value).decode()
    return None
