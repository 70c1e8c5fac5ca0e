"""Every payload model by CloudEvents type and by type name; reading and checking values.

``validate_value`` checks a value about to be published (the relay's side);
``parse_message`` reads a consumed message whole, headers and value (a consumer's).

A consumer reads ``ce_type`` from the headers and hands it with the value to
``parse_value``; what cannot be parsed is one of three named errors, each with a short
``reason`` for a dead-letter header: ``unknown_event_type`` (not a type secstate
publishes), ``unknown_version`` (a known event type in a payload version this release
does not know, e.g. newer than the consumer) and ``payload_invalid`` (not a valid value
of its model; pydantic's message says where); ``parse_message`` adds ``HeaderError``
(``headers_invalid``) and ``HeadersMismatch`` (``headers_mismatch``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from contracts.cloudevents import CloudEventAttributes, event_id, partition_key, subject_for
from contracts.envelope import SecurityEvent
from contracts.payloads import CE_TYPE_PREFIX, MODELS, EventData

_BY_CE_TYPE: dict[str, type[EventData]] = {}
_BY_EVENT_TYPE: dict[str, type[EventData]] = {}
for _model in MODELS:
    if _model.CE_TYPE in _BY_CE_TYPE:
        raise TypeError(f"{_model.CE_TYPE} names two models")
    _BY_CE_TYPE[_model.CE_TYPE] = _model
    # the newest version of each event type is the one the relay publishes
    known = _BY_EVENT_TYPE.get(_model.EVENT_TYPE)
    if known is None or known.VERSION < _model.VERSION:
        _BY_EVENT_TYPE[_model.EVENT_TYPE] = _model

MODELS_BY_CE_TYPE: Mapping[str, type[EventData]] = _BY_CE_TYPE
MODELS_BY_EVENT_TYPE: Mapping[str, type[EventData]] = _BY_EVENT_TYPE
_ENVELOPES: dict[type[EventData], type[SecurityEvent[Any]]] = {}
for _model in MODELS:
    _ENVELOPES[_model] = SecurityEvent[_model]  # type: ignore[valid-type]
_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>[0-9]+)$")
_KNOWN_NAMES = frozenset(_VERSIONED.sub(r"\g<name>", ce) for ce in _BY_CE_TYPE)


class ContractError(ValueError):
    """A message value that cannot be read as a secstate event; ``reason`` names why."""

    reason = "invalid"


class UnknownEventType(ContractError):
    """The CloudEvents type is not one secstate publishes."""

    reason = "unknown_event_type"


class UnknownVersion(ContractError):
    """A known event type, in a payload version this code does not know."""

    reason = "unknown_version"


class PayloadInvalid(ContractError):
    """The value is not valid JSON, or not a valid event of its type."""

    reason = "payload_invalid"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class HeadersMismatch(ContractError):
    """The headers and the value of a message describe different events."""

    reason = "headers_mismatch"


def model_for_ce_type(ce_type: str) -> type[EventData] | None:
    """The payload model of ``io.secstate.user.password_changed.v1``, if it is one."""
    return _BY_CE_TYPE.get(ce_type)


def model_for_event_type(name: str) -> type[EventData] | None:
    """The newest payload model of a ledger type name (``User.PasswordChanged``)."""
    return _BY_EVENT_TYPE.get(name)


def envelope_for(model: type[EventData]) -> type[SecurityEvent[Any]]:
    """``SecurityEvent[model]``, the message value's model (built once per model)."""
    return _ENVELOPES[model]


def resolve(ce_type: str) -> type[EventData]:
    """The model of a CloudEvents type; UnknownVersion or UnknownEventType if none."""
    model = _BY_CE_TYPE.get(ce_type)
    if model is not None:
        return model
    shown = ce_type[:120]
    versioned = _VERSIONED.match(ce_type)
    if versioned and versioned["name"] in _KNOWN_NAMES:
        known = sorted(m.VERSION for m in MODELS if m.CE_TYPE.startswith(versioned["name"] + ".v"))
        raise UnknownVersion(
            f"unknown version of {versioned['name']!r}: v{versioned['version'][:12]} "
            f"(known: {', '.join(f'v{v}' for v in known)})"
        )
    if not ce_type.startswith(CE_TYPE_PREFIX):
        raise UnknownEventType(f"{shown!r} is not a secstate event type ({CE_TYPE_PREFIX}...)")
    raise UnknownEventType(f"unknown event type {shown!r}")


def parse_value(ce_type: str, value: bytes | str) -> SecurityEvent[Any]:
    """The message value of a ``ce_type`` message, validated into its model."""
    model = resolve(ce_type)
    try:
        return _ENVELOPES[model].model_validate_json(value)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        raise PayloadInvalid(f"{ce_type}: {describe(errors)}", [dict(x) for x in errors]) from None


def validate_value(value: Mapping[str, Any]) -> SecurityEvent[Any]:
    """A value as ``domain.public.public_payload`` gives it (plus ``account_id``), checked
    against the newest model of its ``type``: what the relay publishes."""
    name = value.get("type")
    model = model_for_event_type(name) if isinstance(name, str) else None
    if model is None:
        raise UnknownEventType(f"unknown event type {str(name)[:120]!r}")
    try:
        return _ENVELOPES[model].model_validate(value)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        raise PayloadInvalid(f"{name}: {describe(errors)}", [dict(x) for x in errors]) from None


class Message(NamedTuple):
    """A message read whole: its CloudEvents attributes and its event."""

    attributes: CloudEventAttributes
    event: SecurityEvent[Any]


def parse_message(headers: Iterable[tuple[str, bytes | None]], value: bytes | str) -> Message:
    """A message's headers and value, each validated, and checked to describe one event.

    HeaderError for the headers, then UnknownEventType, UnknownVersion or PayloadInvalid
    for the value, then HeadersMismatch if ``ce_id``, ``ce_subject``, ``ce_time``,
    ``ce_recordedtime`` or ``ce_partitionkey`` disagree with it.
    """
    attributes = CloudEventAttributes.from_headers(headers)
    event = parse_value(attributes.type, value)
    expected = {
        "ce_id": event_id(event.aggregate_id, event.version),
        "ce_subject": subject_for(event.type, event.aggregate_id),
        "ce_partitionkey": partition_key(event.account_id, event.aggregate_id),
    }
    actual = {
        "ce_id": attributes.id,
        "ce_subject": attributes.subject,
        "ce_partitionkey": str(attributes.partitionkey),
    }
    wrong = [name for name in expected if expected[name] != actual[name]]
    if attributes.time != event.occurred_at:
        wrong.append("ce_time")
    if attributes.recordedtime != event.recorded_at:
        wrong.append("ce_recordedtime")
    if wrong:
        raise HeadersMismatch(f"{', '.join(wrong)} disagree(s) with the message value")
    return Message(attributes, event)


def describe(errors: list[Any], limit: int = 5) -> str:
    """Pydantic's errors on one line: ``data.records: Input should be a valid integer``."""
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in errors[:limit]
    ]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


__all__ = [
    "MODELS",
    "MODELS_BY_CE_TYPE",
    "MODELS_BY_EVENT_TYPE",
    "ContractError",
    "HeadersMismatch",
    "Message",
    "PayloadInvalid",
    "UnknownEventType",
    "UnknownVersion",
    "envelope_for",
    "model_for_ce_type",
    "model_for_event_type",
    "parse_message",
    "parse_value",
    "resolve",
    "validate_value",
]
