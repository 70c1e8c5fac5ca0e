"""Reading the ledger's log for a rebuild: stored rows straight from the table, and our
own events decoded without the library's per-object JSON hook.

The library's mapper parses every stored event with ``json.JSONDecoder(object_hook=...)``,
which calls back into Python for every JSON object, and builds a ``Notification``
dataclass per row. For a rebuild of a million events that is most of the cost of reading
the log. Here rows come back as plain tuples, the JSON is parsed by the C decoder alone,
and only the top-level values that carry a transcoded type (``{"_type_": ..., "_data_":
...}``: datetimes, UUIDs) are converted, by the transcoder's own transcodings. The result
is the same domain event object the mapper makes (same class, same ``__dict__``); an
event this shortcut cannot handle exactly (an encrypted or compressed store, a transcoded
value nested deeper than the top level, anything unexpected) goes through the mapper.

Topics are looked up in the catalogue of our own classes (``domain.catalogue``) before
anything is decoded, and nothing is ever imported: others raise ``UntrustedTopicError``.
A decoded state is checked against its class's fields like the ledger's mapper does.
"""

from __future__ import annotations

import json
import json.scanner
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Notification,
    Transcoding,
    UUIDAsHex,
)

from domain.catalogue import event_class, state_problem
from domain.errors import DamagedHistoryError, UntrustedTopicError
from domain.ledger import Ledger

# (position, originator id, originator version, topic, state), as stored.
RawRow = tuple[int, Any, int, str, bytes]

_TYPE_KEY = '"_type_"'
# json.loads without its wrapper (a whitespace regex and a Python frame per call): the
# C scanner of a default decoder, which parses exactly as json.loads does.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_new = object.__new__
_set = object.__setattr__
_UUID = uuid.UUID
_fromisoformat = datetime.fromisoformat
_MAX_CACHED_IDS = 500_000


def untrusted(position: int, topic: str, originator_id: Any, version: int) -> UntrustedTopicError:
    return UntrustedTopicError(
        "the topic is not one of the ledger's event classes; refusing to import it",
        originator_id=originator_id,
        originator_version=version,
        topic=topic,
        position=position,
    )


class LogReader:
    """Batches of the ledger's log as plain tuples (``RawRow``), in position order.

    SQLite and PostgreSQL recorders are read with one SQL statement per batch on the
    recorder's own connection; any other recorder through ``select_notifications``.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.recorder: Any = ledger.recorder
        self._read: Callable[[int, int, int | None], Sequence[RawRow]]
        from eventsourcing.postgres import PostgresApplicationRecorder
        from eventsourcing.sqlite import SQLiteApplicationRecorder

        if isinstance(self.recorder, SQLiteApplicationRecorder):
            self._read = self._read_sqlite
        elif isinstance(self.recorder, PostgresApplicationRecorder):
            self._read = self._read_postgres
        else:
            self._read = self._read_notifications

    def read(self, start: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        """Up to ``limit`` rows with positions from ``start`` (inclusive) to ``stop``."""
        return self._read(start, limit, stop)

    def _read_sqlite(self, start: int, limit: int, stop: int | None) -> Sequence[RawRow]:
        table = self.recorder.events_table_name
        statement = (
            f"SELECT rowid, originator_id, originator_version, topic, state FROM {table} "
            "WHERE rowid >= ?" + (" AND rowid <= ?" if stop is not None else "")
        )
        params = (start, stop, limit) if stop is not None else (start, limit)
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(statement + " ORDER BY rowid LIMIT ?", params)
            return [tuple(row) for row in c.fetchall()]

    def _read_postgres(self, start: int, limit: int, stop: int | None) -> Sequence[RawRow]:
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {schema}.{table} WHERE notification_id >= %s"
        ).format(
            schema=Identifier(self.recorder.datastore.schema),
            table=Identifier(self.recorder.events_table_name),
        )
        if stop is not None:
            statement += SQL(" AND notification_id <= %s")
        statement += SQL(" ORDER BY notification_id LIMIT %s")
        params = (start, stop, limit) if stop is not None else (start, limit)
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            cur.execute(statement, params, prepare=True)
            rows: list[RawRow] = cur.fetchall()
        return rows

    def _read_notifications(self, start: int, limit: int, stop: int | None) -> Sequence[RawRow]:
        return [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in self.recorder.select_notifications(start=start, limit=limit, stop=stop)
        ]


class EventDecoder:
    """Stored rows of our own events -> the same domain events as ``ledger.mapper`` makes."""

    def __init__(self, ledger: Ledger) -> None:
        self.mapper: Any = ledger.mapper
        transcoder = self.mapper.transcoder
        # The shortcut reproduces JSONTranscoder.decode exactly; anything else, the mapper.
        self.shortcut = (
            self.mapper.cipher is None
            and self.mapper.compressor is None
            and isinstance(transcoder, JSONTranscoder)
            and type(transcoder).decode is JSONTranscoder.decode
            and type(transcoder)._decode_obj is JSONTranscoder._decode_obj
        )
        names: dict[str, Transcoding] = (
            dict(transcoder.names) if isinstance(transcoder, JSONTranscoder) else {}
        )
        # The library's own transcodings, called directly (same checks, same result):
        # datetimes and UUIDs are nearly all there is.
        self.transcodings: dict[str, Callable[[Any], Any]] = {
            name: self._iso
            if type(t) is DatetimeAsISO
            else self._uuid_hex
            if type(t) is UUIDAsHex
            else t.decode
            for name, t in names.items()
        }
        # topic -> (class, class_version); only trusted topics ever get in.
        self._classes: dict[str, tuple[type, int]] = {}
        self._ids: dict[str, uuid.UUID] = {}

    def event_class(self, row: RawRow) -> tuple[type, int]:
        """The catalogue's class for a row's topic; UntrustedTopicError if it has none."""
        topic = row[3]
        found = self._classes.get(topic)
        if found is None:
            cls = event_class(topic)
            if cls is None:
                raise untrusted(row[0], topic, row[1], row[2])
            found = self._classes[topic] = (cls, getattr(cls, "class_version", 1))
        return found

    @staticmethod
    def _iso(data: Any) -> datetime:
        if type(data) is not str:
            raise TypeError("datetime_iso data must be a string")
        return _fromisoformat(data)

    def _uuid_hex(self, data: Any) -> uuid.UUID:
        if type(data) is not str:
            raise TypeError("uuid_hex data must be a string")
        return self._uuid(data)

    def _originator_id(self, originator_id: Any) -> Any:
        if type(originator_id) is not str:
            return originator_id  # PostgreSQL's uuid column comes back as a UUID
        return self._uuid(originator_id)

    def _uuid(self, text: str) -> uuid.UUID:
        """Parsed once per distinct id: the same ids recur all through the log."""
        found = self._ids.get(text)
        if found is None:
            if len(self._ids) >= _MAX_CACHED_IDS:
                self._ids.clear()
            found = self._ids[text] = _UUID(text)
        return found

    def decode(self, row: RawRow) -> Any:
        position, originator_id, version, topic, state = row
        cls, class_version = self.event_class(row)
        if self.shortcut:
            event = self._shortcut(cls, class_version, originator_id, version, state)
            if event is not None:
                problem = state_problem(cls, event.__dict__, columns_added=True)
                if problem is None:
                    return event
                raise DamagedHistoryError(
                    problem,
                    originator_id=originator_id,
                    originator_version=version,
                    topic=topic,
                    position=position,
                )
        return self.mapper.to_domain_event(
            Notification(
                id=position,
                originator_id=self._originator_id(originator_id),
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
        )

    def decode_all(self, rows: Sequence[RawRow]) -> list[tuple[int, Any]]:
        """(position, event) pairs; the first row that fails raises, naming nothing yet
        (the caller knows which views it was reading for)."""
        return [(row[0], self.decode(row)) for row in rows]

    def _shortcut(
        self, cls: type, class_version: int, originator_id: Any, version: int, state: Any
    ) -> Any:
        """The event, or None where only the mapper can be trusted to decode it."""
        try:
            text = state.decode("utf8")
        except (AttributeError, UnicodeDecodeError):
            return None  # not bytes, or not UTF-8: the mapper says what is wrong
        if "\\" in text and "\\u" in text:
            return None  # an escaped character could spell a "_type_" key we cannot see
        try:
            data, end = _scan(text, 0)
        except (StopIteration, ValueError):
            return None
        if end != len(text) or type(data) is not dict or (len(data) == 2 and "_type_" in data):
            return None  # trailing text or whitespace, or not an object: the mapper's case
        converted = 0
        names = self.transcodings
        for key, value in data.items():
            if type(value) is dict and "_type_" in value:
                if len(value) != 2 or "_data_" not in value:
                    return None
                convert = names.get(value["_type_"])
                if convert is None:
                    return None
                try:
                    data[key] = convert(value["_data_"])
                except Exception:
                    return None  # the mapper raises its own error for it
                converted += 1
        # Every "_type_" in the text must be a top-level value converted above; any other
        # (nested deeper, or a string) means the object hook would see more than we did.
        if converted != text.count(_TYPE_KEY):
            return None
        data["originator_id"] = self._originator_id(originator_id)
        data["originator_version"] = version
        from_version = data.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(data)
            from_version += 1
        event: Any = _new(cls)
        _set(event, "__dict__", data)
        return event
