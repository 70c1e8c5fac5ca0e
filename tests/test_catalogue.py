"""The event catalogue covers every event class, every field, and every view's handlers."""

from __future__ import annotations

import dataclasses
import json
import typing
import uuid
from datetime import UTC, datetime

from domain.catalogue import CATALOGUE, EVENT_CLASSES, event_type_name, own_fields
from domain.public import public_payload
from domain.values import ContextEvent
from projections.history import KEY_NAMES, KEY_USE_LINES, NOT_SHOWN
from projections.state.fold import HANDLERS, NO_OP_CLASSES
from projections.timeline import HANDLED_CLASSES


def _domain_event_classes() -> set[type]:
    found: set[type] = set()
    pending: list[type] = [ContextEvent]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        is_base = cls.__name__ == "Event"  # an aggregate's own event base class
        if cls.__module__.startswith("domain.") and "TOPIC" in vars(cls) and not is_base:
            found.add(cls)
    return found


def test_every_domain_event_class_has_a_catalogue_entry() -> None:
    missing = {c.__qualname__ for c in _domain_event_classes()} - {
        c.__qualname__ for c in CATALOGUE
    }
    assert not missing
    assert set(CATALOGUE) == set(EVENT_CLASSES.values())


def test_public_and_secret_fields_cover_every_field_exactly() -> None:
    for cls, entry in CATALOGUE.items():
        assert dataclasses.is_dataclass(cls)
        assert not set(entry.public) & set(entry.secret), cls
        assert set(entry.public) | set(entry.secret) == own_fields(cls), cls.__qualname__
        assert set(entry.sealed) <= set(entry.secret)
        assert {source for source, _, _ in entry.derived} <= set(entry.secret)


def test_type_names_are_the_topics_without_prefix() -> None:
    for topic, cls in EVENT_CLASSES.items():
        assert event_type_name(cls) == event_type_name(topic) == CATALOGUE[cls].type_name
        assert "secstate." + CATALOGUE[cls].type_name == topic


def test_every_view_handler_key_is_a_catalogue_class() -> None:
    for key in [
        *HANDLERS,
        *NO_OP_CLASSES,
        *HANDLED_CLASSES,
        *KEY_USE_LINES,
        *NOT_SHOWN,
        *KEY_NAMES,
    ]:
        assert key in CATALOGUE, key
    assert set(HANDLERS) | NO_OP_CLASSES == set(CATALOGUE)


def _sample(cls: type, secret: str) -> object:
    """An event of ``cls`` whose every secret field holds ``secret`` (lists: of it)."""
    hints = typing.get_type_hints(cls)
    entry = CATALOGUE[cls]
    event = object.__new__(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        text = secret if f.name in entry.secret else f"v-{f.name}"
        value: object
        if hint is datetime:
            value = datetime(2015, 3, 1, tzinfo=UTC)
        elif hint is uuid.UUID:
            value = uuid.uuid4()
        elif hint is bool:
            value = False
        elif hint in (int, int | None):
            value = 1
        elif typing.get_origin(hint) is list:
            value = [text, text]
        else:
            value = text
        event.__dict__[f.name] = value
    return event


def test_public_payload_never_holds_a_secret_field_value() -> None:
    secret = "s3cr3t-" + "x" * 20
    for cls, entry in CATALOGUE.items():
        payload = public_payload(_sample(cls, secret))
        text = json.dumps(payload, ensure_ascii=True)
        assert secret not in text, cls.__qualname__
        assert not set(entry.secret) & set(payload["data"]), cls.__qualname__
        assert payload["type"] == entry.type_name
        json.loads(text)  # JSON-safe
