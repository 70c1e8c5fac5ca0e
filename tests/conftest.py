"""Shared fixtures: every store-backed test runs on SQLite and on PostgreSQL.

PostgreSQL tests isolate themselves in a fresh schema dropped afterwards. Kafka tests get
a real Kafka-protocol broker started by the fixtures (tests/kafka_broker.py). Under CI
(``CI=true``) a skipped PostgreSQL or Kafka test fails the run: a green CI must mean both
backends and the broker were really exercised.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from domain.context import RequestContext, SteppedClock
from domain.ledger import Ledger
from secstate.bootstrap import build_ledger
from secstate.keyring import create_ring_file
from secstate.settings import Settings

if TYPE_CHECKING:  # kafka_broker imports kafka-python: only tests that use it pay for it
    from kafka_broker import DurableKafkaBroker, KafkaBroker, MotoS3

POSTGRES_URL = os.environ.get(
    "SECSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

# Cheap argon2 and small RSA keys keep the suite fast; production defaults are tested
# separately where it matters (the benchmark records their cost).
FAST = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
    "dkim_rsa_bits": 1024,
}


def _postgres_available() -> str | None:
    """None if reachable, else the reason."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {e}"
    return None


_PG_PROBLEM: str | bool | None = False  # False: not probed yet


def postgres_problem() -> str | None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_available()
    return _PG_PROBLEM if isinstance(_PG_PROBLEM, str) else None


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_settings(
    backend: str,
    home: Path,
    schema: str | None = None,
    *,
    keyring: bool = True,
    **overrides: object,
) -> Settings:
    """Settings of a test store. A PostgreSQL store gets no key ring by itself, so its home
    is given one as an operator would (``secstate keys init``), unless ``keyring=False``."""
    values: dict[str, object] = {"home": home, **FAST, **overrides}
    if backend == "postgres":
        assert schema is not None
        values["database_url"] = f"{POSTGRES_URL}?schema={schema}"
    settings = Settings(**values)  # type: ignore[arg-type]
    if keyring and backend == "postgres" and settings.keys is None:
        with contextlib.suppress(FileExistsError):
            create_ring_file(settings)
    return settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    return make_settings(backend, tmp_path / "home", schema)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(START)


@pytest.fixture
def ledger(settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    app = build_ledger(settings, clock=clock)
    yield app
    app.close()


@pytest.fixture
def ctx() -> RequestContext:
    return RequestContext(source_ip="198.51.100.10", user_agent="pytest")


# --- Kafka: a real Kafka-protocol broker (Tansu), started and stopped here ----------------

KAFKA_FIXTURES = frozenset({"kafka_broker", "durable_kafka_broker", "kafka_s3"})
_KAFKA_PROBLEM: str | None = None  # why a durable broker could not start, once seen


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A memory broker for the whole session (one per xdist worker, each on its own port).
    Tests share it, so each makes its own topic: ``kafka_broker.create_topic(partitions)``.
    Tests must not stop it (nothing would survive): ``durable_kafka_broker`` is for that."""
    from kafka_broker import BrokerUnavailable, start_memory_broker

    try:
        broker = start_memory_broker(tmp_path_factory.mktemp("kafka"))
    except BrokerUnavailable as e:
        pytest.skip(f"Kafka test broker: {e}")
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def kafka_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """The session's moto_server (S3), which durable brokers store into, a bucket each."""
    from kafka_broker import BrokerUnavailable, start_s3

    try:
        s3 = start_s3(tmp_path_factory.mktemp("kafka-s3"))
    except BrokerUnavailable as e:
        pytest.skip(f"S3 server for the durable Kafka test broker: {e}")
    yield s3
    s3.stop()


@pytest.fixture
def durable_kafka_broker(kafka_s3: MotoS3, tmp_path: Path) -> Iterator[DurableKafkaBroker]:
    """A broker of this test alone, on s3:// storage (a fresh bucket of ``kafka_s3``): the
    test may ``stop()``, ``stop(kill=True)``, ``start()`` and ``restart()`` it, and finds
    its topics, records and committed offsets again. Stopped after the test, and the S3
    server emptied."""
    global _KAFKA_PROBLEM
    if _KAFKA_PROBLEM:
        pytest.skip(_KAFKA_PROBLEM)
    from kafka_broker import BrokerUnavailable, start_durable_broker

    try:
        broker = start_durable_broker(tmp_path / "kafka", kafka_s3)
    except BrokerUnavailable as e:
        _KAFKA_PROBLEM = f"durable Kafka test broker: {e}"
        pytest.skip(_KAFKA_PROBLEM)
    yield broker
    broker.close()
    kafka_s3.reset()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a broker fixture is marked ``kafka`` (for -m and the CI guard)."""
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


# --- CI guard: PostgreSQL and Kafka tests must not be skipped in CI ----------------------

_GUARDED = {
    "postgres": ("PostgreSQL", "PostgreSQL must be running for CI."),
    "kafka": ("Kafka", "The Kafka test broker (tests/kafka_broker.py) must start for CI."),
}
_skipped: dict[str, list[str]] = {marker: [] for marker in _GUARDED}
_ran: dict[str, list[str]] = {marker: [] for marker in _GUARDED}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for marker in _GUARDED:
        if marker not in report.keywords:
            continue
        if report.skipped:
            _skipped[marker].append(report.nodeid)
        elif report.when == "call":
            _ran[marker].append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    for marker, (name, remedy) in _GUARDED.items():
        skipped = _skipped[marker]
        if skipped:
            print(
                f"\nCI FAILURE: {len(skipped)} {name} test(s) were skipped in CI, "
                f"e.g. {skipped[0]}. {remedy}"
            )
            session.exitstatus = 1
