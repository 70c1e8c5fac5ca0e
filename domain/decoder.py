"""Decoding stored rows of our own events, fast: the same domain event objects as the
ledger's trusted mapper makes, without the library's per-object JSON hook.

The library's mapper parses every stored event with ``json.JSONDecoder(object_hook=...)``,
which calls back into Python for every JSON object. Here the JSON is parsed by the C
decoder alone, and only the top-level values that carry a transcoded type (``{"_type_":
..., "_data_": ...}``: datetimes, UUIDs) are converted, by the transcoder's own
transcodings. The result is the same domain event the mapper makes (same class, same
``__dict__``); a row this shortcut cannot handle exactly (an encrypted or compressed
store, a transcoded value nested deeper than the top level, anything unexpected) goes
through the mapper.

Topics are looked up in the catalogue of our own classes (``domain.catalogue``) before
anything is decoded, and nothing is ever imported: others raise ``UntrustedTopicError``.
A decoded state is checked against its class's fields like the ledger's mapper does.
"""

from __future__ import annotations

import json
import json.scanner
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    Notification,
    Transcoding,
    UUIDAsHex,
)

from domain.catalogue import event_class, state_problem
from domain.errors import DamagedHistoryError, UntrustedTopicError
from domain.ports import RawRow

_TYPE_KEY = '"_type_"'
# json.loads without its wrapper (a whitespace regex and a Python frame per call): the
# C scanner of a default decoder, which parses exactly as json.loads does.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # the C scanner takes a decoder
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


class EventDecoder:
    """Stored rows of our own events -> the same domain events as ``ledger.mapper`` makes."""

    def __init__(self, mapper: Mapper[uuid.UUID]) -> None:
        self.mapper: Any = mapper
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
