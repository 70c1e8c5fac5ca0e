"""One delivered message, typed: its CloudEvents attributes and its security event, whose
``data`` is the event type's payload model. ``decode`` turns a Kafka record's headers and
value into one, or into a ``Rejected`` that names why it cannot be handled (the reason a
dead-letter message carries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from contracts.cloudevents import CloudEventAttributes, HeaderError
from contracts.envelope import SecurityEvent
from contracts.payloads import EventData
from contracts.registry import ContractError, HeadersMismatch, PayloadInvalid, parse_message

DataT_co = TypeVar("DataT_co", bound=EventData, covariant=True)

# Why a message is dead-lettered (the ``dlq_reason`` header): the contract's reasons
# (headers_invalid, unknown_event_type, unknown_version, payload_invalid, headers_mismatch)
# and these two.
MALFORMED_VALUE = "malformed_value"  # no value, or not JSON
HEADERS_INVALID = HeaderError.reason  # a CloudEvents header missing or invalid
HEADERS_MISMATCH = HeadersMismatch.reason  # headers (or key) and value describe different events
HANDLER_FAILED = "handler_failed"  # the handler raised on every attempt


@dataclass(frozen=True)
class Delivered(Generic[DataT_co]):
    """What a handler is given: the message's CloudEvents attributes and its event, and
    where it was read (None when a test builds one)."""

    attributes: CloudEventAttributes
    event: SecurityEvent[DataT_co]
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def data(self) -> DataT_co:
        """The event type's payload (``PasswordChanged``, ``ApiKeyRevoked``, ...)."""
        return self.event.data

    @property
    def ce_id(self) -> str:
        """The event's identity, ``<aggregate id>:<version>``, the same on a re-publish."""
        return self.attributes.id

    @property
    def ce_type(self) -> str:
        return self.attributes.type

    @property
    def sequence(self) -> int:
        """The account's sequence number of this event (1, 2, 3, ...)."""
        return self.attributes.accountseq

    @property
    def partition_key(self) -> str:
        """The account id (the aggregate id of an event of no account)."""
        return str(self.attributes.partitionkey)

    @property
    def account_id(self) -> UUID | None:
        return self.event.account_id

    @property
    def aggregate_id(self) -> UUID:
        return self.event.aggregate_id

    @property
    def position(self) -> int:
        """The event's position in the ledger's global log."""
        return self.attributes.logposition


@dataclass(frozen=True)
class Rejected:
    """A message that cannot be handled: ``reason`` is a short name, ``detail`` says
    what was wrong; ``ce_id`` is the header's when there was a readable one."""

    reason: str
    detail: str
    ce_id: str | None = None


Headers = list[tuple[str, bytes]]


def _header(headers: Headers, name: str) -> str | None:
    for key, raw in headers:
        if key == name and raw is not None:
            try:
                return bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def decode(
    headers: Headers,
    value: bytes | None,
    key: bytes | None = None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Delivered[Any] | Rejected:
    """The delivery of a record, or why it is none: ``contracts.registry.parse_message``
    reads the headers into ``CloudEventAttributes``, validates the value into the model of
    ``ce_type`` and checks that both describe one event; the Kafka key, if any, must be
    the partition key."""
    if value is None or not value.strip():
        return Rejected(MALFORMED_VALUE, "the message has no value", _header(headers, "ce_id"))
    try:
        attributes, event = parse_message(headers, value)
    except HeaderError as e:
        return Rejected(HEADERS_INVALID, str(e), _header(headers, "ce_id"))
    except PayloadInvalid as e:
        ce_id = _header(headers, "ce_id")
        if any(err.get("type") == "json_invalid" for err in e.errors):
            return Rejected(MALFORMED_VALUE, f"the value is not JSON: {e}", ce_id)
        return Rejected(e.reason, str(e), ce_id)
    except ContractError as e:
        return Rejected(e.reason, str(e), _header(headers, "ce_id"))
    if key is not None and key != attributes.key:
        return Rejected(HEADERS_MISMATCH, "the message key is not ce_partitionkey", attributes.id)
    return Delivered(attributes, event, topic, partition, offset)


__all__ = [
    "HANDLER_FAILED",
    "HEADERS_INVALID",
    "HEADERS_MISMATCH",
    "MALFORMED_VALUE",
    "Delivered",
    "Rejected",
    "decode",
]
