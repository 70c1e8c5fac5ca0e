"""The views' databases: one connection to where a view lives (its own SQLite file, or
the ledger's PostgreSQL schema), hiding the dialects' small differences.

SQL is written with ``?`` placeholders and translated to ``%s`` for PostgreSQL. What the
dialects do differently (locking a row, bulk inserts, connection settings, statistics
after a rebuild, the catalog) is a method here, so views never branch on the database.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from store.connect import postgres_connect, schema_of

Dialect = Literal["sqlite", "postgres"]
# The longest a process waits for the store's setup lock (another process creating tables).
SETUP_LOCK_TIMEOUT = 60.0
# How long a view's SQLite connection waits for the write lock, at least.
SQLITE_VIEW_LOCK_TIMEOUT = 30.0


def setup_lock_key(schema: str) -> str:
    """The PostgreSQL advisory lock (hashed) under which all of a schema's DDL runs: the
    ledger's tables (``store.setup``) and the views' (``ViewDB.setup_transaction``)."""
    return f"secstate:{schema}:schema-setup"


class ViewDB:
    """One connection to where a view lives, hiding the SQL dialect's small differences.

    SQL is written with ``?`` placeholders and translated to ``%s`` for PostgreSQL.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        sqlite_path: Path | None = None,
        postgres: dict[str, str] | None = None,
        lock_timeout: float = SQLITE_VIEW_LOCK_TIMEOUT,
    ) -> None:
        self.dialect = dialect
        self._lock = threading.Lock()
        if dialect == "sqlite":
            if sqlite_path is None:
                raise ValueError("a SQLite view database needs its file")
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self._sqlite = sqlite3.connect(
                str(sqlite_path),
                isolation_level=None,
                check_same_thread=False,
                timeout=lock_timeout,
            )
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
        else:
            if postgres is None:
                raise ValueError("a PostgreSQL view database needs its connection parameters")
            self.schema = schema_of(postgres)
            self._pg = postgres_connect(postgres)
            self._pg.execute(f'SET search_path TO "{self.schema}"')

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing: the body's writes commit together or roll back together."""
        with self._lock:
            cur: Any
            if self.dialect == "sqlite":
                cur = self._sqlite.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self, cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            else:
                with self._pg.transaction(), self._pg.cursor() as cur:
                    yield Tx(self, cur)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only cursor (a consistent snapshot on PostgreSQL)."""
        with self._lock:
            cur: Any
            if self.dialect == "sqlite":
                cur = self._sqlite.cursor()
                try:
                    yield Tx(self, cur)
                finally:
                    cur.close()
            else:
                with self._pg.transaction(), self._pg.cursor() as cur:
                    yield Tx(self, cur)

    def execute_outside_transaction(self, statement: str) -> Any:
        """One statement on its own (PostgreSQL refuses VACUUM inside a transaction);
        returns the first row, if any."""
        with self._lock:
            if self.dialect == "sqlite":
                return self._sqlite.execute(statement).fetchone()
            cursor = self._pg.execute(statement)
            return cursor.fetchone() if cursor.description else None

    @contextlib.contextmanager
    def setup_transaction(self) -> Iterator[Tx]:
        """A transaction for DDL, holding the store's setup lock until it ends: SQLite's
        write lock (BEGIN IMMEDIATE), or on PostgreSQL the schema's advisory lock, the one
        the ledger's own setup takes (the schema is created first if missing). Look again
        inside it before creating anything: another process may have just done it."""
        with self.transaction() as tx:
            if self.dialect == "postgres":
                tx.execute(f"SET LOCAL lock_timeout = '{int(SETUP_LOCK_TIMEOUT * 1000)}ms'")
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                    (setup_lock_key(self.schema),),
                )
                if tx.query_one("SELECT to_regnamespace(?)", (self.schema,))[0] is None:
                    tx.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            yield tx

    def existing_tables(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` exist (in this view's file or schema): one catalog query."""
        with self.reading() as tx:
            return tx.existing_tables(names)

    def table_exists(self, name: str) -> bool:
        return name in self.existing_tables([name])

    @contextlib.contextmanager
    def pragmas(self, **values: int | str) -> Iterator[None]:
        """SQLite connection settings for the duration, then back to what they were
        (nothing on PostgreSQL)."""
        if self.dialect != "sqlite":
            yield
            return
        run = self.execute_outside_transaction
        saved = {name: run(f"PRAGMA {name}")[0] for name in values}
        try:
            for name, value in values.items():
                run(f"PRAGMA {name} = {value}")
            yield
        finally:
            for name, value in saved.items():
                run(f"PRAGMA {name} = {int(value)}")

    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """After tables were built anew: PostgreSQL's planner statistics and visibility map
        (which autovacuum would give them only later); nothing on SQLite."""
        if self.dialect == "postgres":
            for table in tables:
                self.execute_outside_transaction(f"VACUUM (ANALYZE) {table}")

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """Database trouble that says nothing about the events (a lock held too long, a
        dropped connection): worth retrying rather than stopping the view."""
        if isinstance(error, sqlite3.OperationalError):
            text = str(error).lower()
            return "locked" in text or "busy" in text
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            return False
        return isinstance(error, psycopg.OperationalError)

    def close(self) -> None:
        if self.dialect == "sqlite":
            self._sqlite.close()
        else:
            self._pg.close()


class Tx:
    """A cursor inside one transaction, with dialect-aware helpers."""

    def __init__(self, db: ViewDB, cursor: Any) -> None:
        self.db = db
        self.cursor = cursor
        self.dialect: Dialect = db.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cursor.execute(self.db.sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self.db.sql(sql), rows)

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.execute(sql, params)
        return self.cursor.fetchone()

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.execute(sql, params)
        return list(self.cursor.fetchall())

    def query_one_locked(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """``query_one`` of a row kept locked until the transaction ends (PostgreSQL's
        ``FOR UPDATE``; a SQLite write transaction holds the whole file already)."""
        return self.query_one(sql + (" FOR UPDATE" if self.dialect == "postgres" else ""), params)

    @contextlib.contextmanager
    def pragmas(self, **values: int | str) -> Iterator[None]:
        """SQLite connection settings for the rest of this block (nothing on PostgreSQL)."""
        if self.dialect != "sqlite":
            yield
            return
        saved = {name: self.query_one(f"PRAGMA {name}")[0] for name in values}
        try:
            for name, value in values.items():
                self.query_one(f"PRAGMA {name} = {value}")
            yield
        finally:
            for name, value in saved.items():
                self.query_one(f"PRAGMA {name} = {int(value)}")

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows: PostgreSQL's COPY (under half the time of INSERTs; a conflict
        still fails the transaction), SQLite's executemany."""
        if not rows:
            return
        if self.dialect == "postgres" and len(rows) > 1:
            with self.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join("?" * len(columns))
        self.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608 - the view's own table and columns
            rows,
        )

    def index_names(self, table: str) -> list[str]:
        """The names of ``table``'s indexes, as this transaction sees the catalog."""
        if self.dialect == "sqlite":
            rows = self.query_all(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
            )
        else:
            rows = self.query_all(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = ?",
                (table,),
            )
        return [str(row[0]) for row in rows]

    def lock_for_indexing(self, table: str) -> None:
        """Keep other writers (and index builders) off ``table`` until this transaction
        ends; readers are not blocked. A SQLite write transaction holds the file already."""
        if self.dialect == "postgres":
            self.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")

    def analyze(self, table: str) -> None:
        """Refresh the planner's statistics of ``table`` (SQLite: from a sample)."""
        if self.dialect == "sqlite":
            self.execute("PRAGMA analysis_limit = 1000")  # sample; exact counts cost a scan
        self.execute(f"ANALYZE {table}")

    def statistics_stale(self, table: str, size: int) -> bool:
        """Whether ``table``, now of ``size`` rows, grew tenfold since it was last analyzed.
        Always False on PostgreSQL, whose autovacuum analyzes by itself."""
        if self.dialect != "sqlite":
            return False
        if not self.query_one("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"):
            return True
        stat = self.query_one("SELECT stat FROM sqlite_stat1 WHERE tbl = ? LIMIT 1", (table,))
        analysed = int(str(stat[0]).split()[0]) if stat else 0
        return size > 10 * analysed

    def existing_tables(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` exist, as this transaction sees the catalog."""
        if self.dialect == "sqlite":
            rows = self.query_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' "  # noqa: S608 - placeholders only
                f"AND name IN ({', '.join('?' * len(names))})",
                list(names),
            )
        else:
            rows = self.query_all(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ? AND c.relname = ANY(?) AND c.relkind IN ('r', 'p')",
                (self.db.schema, list(names)),
            )
        return {str(row[0]) for row in rows}
