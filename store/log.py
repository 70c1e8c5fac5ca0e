"""``domain.ports.LogStore`` for the SQLite and PostgreSQL recorders of eventsourcing 9.5.

Each read is one SQL statement on the recorder's own connection (so it sees what the
recorder wrote, in one consistent snapshot), returning plain tuples: the library's
``select_notifications`` makes a ``Notification`` and a UUID of every row, which for a
scan of a million events is most of its cost. ``log_store(recorder)`` picks the
implementation; any other recorder gets the library path (``RecorderLog``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any, LiteralString

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteApplicationRecorder

from domain.ports import LogStore, RawRow, RecorderLog, ResetRow, check_limit


def log_store(recorder: ApplicationRecorder) -> LogStore:
    """The fastest ``LogStore`` for ``recorder``."""
    if isinstance(recorder, SQLiteApplicationRecorder):
        return SqliteLog(recorder)
    from eventsourcing.postgres import PostgresApplicationRecorder

    if isinstance(recorder, PostgresApplicationRecorder):
        return PostgresLog(recorder)
    return RecorderLog(recorder)


class SqliteLog(RecorderLog):
    """The log of a SQLite recorder: positions are the events table's rowids."""

    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        super().__init__(recorder)
        self.sqlite = recorder
        self.table = recorder.events_table_name

    def _rows(self, statement: str, params: Sequence[Any]) -> list[Any]:
        with self.sqlite.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    def head(self) -> int:
        rows = self._rows(f"SELECT MAX(rowid) FROM {self.table}", ())  # noqa: S608 - the recorder's table
        return int(rows[0][0] or 0)

    def read(self, start: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        check_limit(limit)
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608 - the recorder's table
            f"FROM {self.table} WHERE rowid >= ?" + (" AND rowid <= ?" if stop is not None else "")
        )
        params = (start, stop, limit) if stop is not None else (start, limit)
        return [RawRow(*row) for row in self._rows(statement + " ORDER BY rowid LIMIT ?", params)]

    def _scan(self, topics: list[str] | None, batch: int) -> Iterator[Sequence[RawRow]]:
        wanted = topics if topics is not None else []
        where = f" AND topic IN ({','.join('?' * len(wanted))})" if topics is not None else ""
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608 - the recorder's table
            f"FROM {self.table} WHERE rowid > ?{where} ORDER BY rowid LIMIT ?"
        )
        after = 0
        while True:
            rows = self._rows(statement, (after, *wanted, batch))
            if not rows:
                return
            yield [RawRow(*row) for row in rows]
            after = rows[-1][0]

    def position_of(self, originator_id: uuid.UUID, version: int) -> int | None:
        rows = self._rows(
            f"SELECT rowid FROM {self.table} "  # noqa: S608 - the recorder's table
            "WHERE originator_id = ? AND originator_version = ?",
            (originator_id.hex, version),
        )
        return int(rows[0][0]) if rows else None

    def actor_and_aggregate(
        self, actor_id: uuid.UUID, after: int, aggregate_id: uuid.UUID
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]] | None:
        rows = self._rows(
            "SELECT 0, originator_version, topic, NULL FROM "  # noqa: S608 - the recorder's table
            f"{self.table} WHERE originator_id = ? AND originator_version > ? UNION ALL "
            f"SELECT 1, originator_version, topic, state FROM {self.table} "
            "WHERE originator_id = ? ORDER BY 1, 2",
            (actor_id.hex, after, aggregate_id.hex),
        )
        return _split_actor_rows(rows)

    def reset_scan(
        self, topics: Sequence[str], reset_topics: Sequence[str]
    ) -> Sequence[ResetRow] | None:
        resets = ",".join("?" * len(reset_topics))
        statement = (
            "SELECT originator_id, originator_version, topic, "  # noqa: S608 - the recorder's table
            f"CASE WHEN topic IN ({resets}) THEN state END FROM {self.table} "
            f"WHERE topic IN ({','.join('?' * len(topics))}) ORDER BY rowid"
        )
        rows: Sequence[Any] = self._rows(statement, [*reset_topics, *topics])
        return rows  # sqlite3.Row unpacks like the tuple it stands for

    def id_text(self, originator_id: uuid.UUID) -> str:
        return originator_id.hex

    def insert(self, stored_events: Sequence[StoredEvent]) -> None:
        # The application recorder inserts row by row to collect notification ids, which
        # nothing here needs; its base class's one executemany is ~3x faster.
        with self.sqlite.datastore.transaction(commit=True) as cursor:
            SQLiteAggregateRecorder._insert_events(self.sqlite, cursor, list(stored_events))


class PostgresLog(RecorderLog):
    """The log of a PostgreSQL recorder: positions are notification ids."""

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        from psycopg.sql import SQL, Identifier

        self.pg = recorder
        self._events = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )

    def _rows(self, query: LiteralString, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """``query`` on the recorder's pool, ``{events}`` standing for its events table."""
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL

        with (
            self.pg.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(SQL(query).format(events=self._events), params, prepare=True)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows

    def head(self) -> int:
        return int(self._rows("SELECT MAX(notification_id) FROM {events}", ())[0][0] or 0)

    def read(self, start: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        check_limit(limit)
        if stop is None:
            rows = self._rows(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {events} WHERE notification_id >= %s ORDER BY notification_id LIMIT %s",
                (start, limit),
            )
        else:
            rows = self._rows(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {events} WHERE notification_id >= %s AND notification_id <= %s "
                "ORDER BY notification_id LIMIT %s",
                (start, stop, limit),
            )
        return [RawRow(*row) for row in rows]

    def _scan(self, topics: list[str] | None, batch: int) -> Iterator[Sequence[RawRow]]:
        after = 0
        while True:
            if topics is None:
                rows = self._rows(
                    "SELECT notification_id, originator_id, originator_version, topic, state "
                    "FROM {events} WHERE notification_id > %s "
                    "ORDER BY notification_id LIMIT %s",
                    (after, batch),
                )
            else:
                rows = self._rows(
                    "SELECT notification_id, originator_id, originator_version, topic, state "
                    "FROM {events} WHERE notification_id > %s AND topic = ANY(%s) "
                    "ORDER BY notification_id LIMIT %s",
                    (after, topics, batch),
                )
            if not rows:
                return
            yield [RawRow(*row) for row in rows]
            after = rows[-1][0]

    def position_of(self, originator_id: uuid.UUID, version: int) -> int | None:
        rows = self._rows(
            "SELECT notification_id FROM {events} "
            "WHERE originator_id = %s AND originator_version = %s",
            (originator_id, version),
        )
        return int(rows[0][0]) if rows else None

    def actor_and_aggregate(
        self, actor_id: uuid.UUID, after: int, aggregate_id: uuid.UUID
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]] | None:
        rows = self._rows(
            "SELECT 0, originator_version, topic, NULL::bytea FROM {events} "
            "WHERE originator_id = %s AND originator_version > %s UNION ALL "
            "SELECT 1, originator_version, topic, state FROM {events} "
            "WHERE originator_id = %s ORDER BY 1, 2",
            (actor_id, after, aggregate_id),
        )
        return _split_actor_rows(rows)

    def reset_scan(
        self, topics: Sequence[str], reset_topics: Sequence[str]
    ) -> Sequence[ResetRow] | None:
        rows: Sequence[Any] = self._rows(
            "SELECT originator_id::text, originator_version, topic, "
            "CASE WHEN topic = ANY(%s) THEN state END FROM {events} "
            "WHERE topic = ANY(%s) ORDER BY notification_id",
            (list(reset_topics), list(topics)),
        )
        return rows

    def id_text(self, originator_id: uuid.UUID) -> str:
        return str(originator_id)


def _split_actor_rows(
    rows: Sequence[Any],
) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]]:
    newer = [(version, topic) for part, version, topic, _ in rows if part == 0]
    events = [(version, topic, bytes(state)) for part, version, topic, state in rows if part]
    return newer, events
