"""A consumer's own database: what it has handled, where each account's sequence stands,
the gaps it saw, the messages it dead-lettered, and the handlers' own tables.

One ``ConsumerStore`` is one database, a SQLite file by default or a PostgreSQL schema by
URL (``postgresql://user@host:5432/db?schema=reactions``). It is ``store.viewdb.ViewDB``
underneath, so handlers write SQL with ``?`` placeholders through the same ``Tx`` on both.
Several consumers may share a database: every bookkeeping row carries the consumer's name.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from store.viewdb import Tx, ViewDB

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# The runtime's bookkeeping, one consumer's rows told apart by ``consumer``.
BOOKKEEPING: tuple[str, ...] = (
    # every ce_id handled (or dead-lettered), in the same transaction as its effect
    """CREATE TABLE IF NOT EXISTS consumer_handled (
        consumer TEXT NOT NULL,
        ce_id TEXT NOT NULL,
        ce_type TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        topic TEXT NOT NULL,
        kafka_partition INTEGER NOT NULL,
        kafka_offset BIGINT NOT NULL,
        handled_at TEXT NOT NULL,
        PRIMARY KEY (consumer, ce_id)
    )""",
    # the last sequence number seen per partition key (account)
    """CREATE TABLE IF NOT EXISTS consumer_sequences (
        consumer TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        last_sequence BIGINT NOT NULL,
        last_ce_id TEXT NOT NULL,
        PRIMARY KEY (consumer, partition_key)
    )""",
    # a sequence number that was skipped: expected, got, and the message that showed it
    """CREATE TABLE IF NOT EXISTS consumer_gaps (
        consumer TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        expected BIGINT NOT NULL,
        got BIGINT NOT NULL,
        ce_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        kafka_partition INTEGER NOT NULL,
        kafka_offset BIGINT NOT NULL,
        detected_at TEXT NOT NULL,
        PRIMARY KEY (consumer, ce_id)
    )""",
    # every message sent to the dead-letter topic, with the reason
    """CREATE TABLE IF NOT EXISTS consumer_dead_letters (
        consumer TEXT NOT NULL,
        topic TEXT NOT NULL,
        kafka_partition INTEGER NOT NULL,
        kafka_offset BIGINT NOT NULL,
        ce_id TEXT,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        dead_letter_topic TEXT NOT NULL,
        dead_lettered_at TEXT NOT NULL,
        PRIMARY KEY (consumer, topic, kafka_partition, kafka_offset)
    )""",
    # counters shown by status: handled, no_handler, duplicates, stale, gaps, ...
    """CREATE TABLE IF NOT EXISTS consumer_counters (
        consumer TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (consumer, name)
    )""",
)
BOOKKEEPING_TABLES = (
    "consumer_handled",
    "consumer_sequences",
    "consumer_gaps",
    "consumer_dead_letters",
    "consumer_counters",
)


class StoreLocationError(ValueError):
    """The consumer store's URL or path cannot be used; the message says why."""


def postgres_params(url: str) -> dict[str, str]:
    """A ``postgresql://user:pass@host:port/db[?schema=NAME]`` URL as the ``POSTGRES_*``
    parameters ``store.connect`` takes."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreLocationError(f"not a PostgreSQL URL: {parts.scheme}://...")
    params = {
        "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
    }
    schema = parse_qs(parts.query).get("schema", [None])[0]
    if schema is not None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreLocationError(
                f"schema {schema[:70]!r} must match [a-z_][a-z0-9_]* (at most 63 characters)"
            )
        params["POSTGRES_SCHEMA"] = schema
    return params


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class ConsumerStore:
    """A consumer's database. ``open`` it from a SQLite path or a PostgreSQL URL; the
    runtime makes its tables, and ``ensure_tables`` the handlers' (idempotent DDL)."""

    def __init__(
        self, db: ViewDB, where: str, reconnect: Callable[[], ViewDB] | None = None
    ) -> None:
        self.db = db
        self.where = where
        self._reconnect = reconnect
        self._ready = False

    @classmethod
    def open(cls, location: str | Path) -> ConsumerStore:
        """``postgresql://...[?schema=NAME]`` or a SQLite file's path (made if missing)."""
        if is_postgres_url(location):
            params = postgres_params(str(location))
            shown = (
                f"postgresql://{params['POSTGRES_USER']}@{params['POSTGRES_HOST']}:"
                f"{params['POSTGRES_PORT']}/{params['POSTGRES_DBNAME']}"
                f" (schema {params.get('POSTGRES_SCHEMA', 'public')})"
            )
            return cls(
                ViewDB("postgres", postgres=params),
                shown,
                reconnect=lambda: ViewDB("postgres", postgres=params),
            )
        path = Path(location).expanduser()
        if path.is_dir():
            raise StoreLocationError(f"{path} is a directory; give the consumer's database file")
        return cls(ViewDB("sqlite", sqlite_path=path), str(path))

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def ensure_tables(self, statements: Sequence[str] = ()) -> None:
        """The runtime's tables and ``statements`` (``CREATE ... IF NOT EXISTS``), made
        under the store's setup lock so concurrent consumers do not collide."""
        with self.db.setup_transaction() as tx:
            for statement in (*BOOKKEEPING, *statements):
                tx.execute(statement)
        self._ready = True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing: a handler's effect and its bookkeeping commit together."""
        with self.db.transaction() as tx:
            yield tx

    @contextlib.contextmanager
    def reading(self) -> Iterator[Tx]:
        with self.db.reading() as tx:
            yield tx

    def is_transient(self, error: BaseException) -> bool:
        """A lock held too long or a dropped connection: retry, it says nothing of the
        message."""
        return ViewDB.is_transient(error)

    def recover(self) -> None:
        """After a transient error: a PostgreSQL connection is opened anew (the old one
        may have been dropped by the server); SQLite's file needs nothing."""
        if self._reconnect is None:
            return
        with contextlib.suppress(Exception):
            self.db.close()
        self.db = self._reconnect()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ConsumerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BOOKKEEPING_TABLES",
    "ConsumerStore",
    "StoreLocationError",
    "Tx",
    "is_postgres_url",
    "postgres_params",
]
