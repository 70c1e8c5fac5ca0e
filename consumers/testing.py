"""Events as the relay publishes them, for testing a consumer: ``delivery(data, ...)`` is
what a handler is given, ``message(data, ...)`` the Kafka key, value and headers.

    given = delivery(PasswordChanged(), aggregate_id=user, account_id=account, sequence=3)
    revoke_sessions(given, tx)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from consumers.delivery import Delivered
from contracts.cloudevents import CloudEventAttributes
from contracts.envelope import ActorKind, SecurityEvent
from contracts.payloads import EventData
from contracts.registry import envelope_for

DataT = TypeVar("DataT", bound=EventData)
WHEN = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def security_event(
    data: DataT,
    *,
    aggregate_id: UUID | None = None,
    version: int = 1,
    account_id: UUID | None = None,
    occurred_at: datetime = WHEN,
    actor_kind: ActorKind = "user",
    actor_id: str = "alice",
    source_ip: str | None = "198.51.100.10",
    user_agent: str | None = "pytest",
    request_id: str = "req-1",
) -> SecurityEvent[DataT]:
    """The message value of one event (``SecurityEvent[type(data)]``)."""
    envelope = envelope_for(type(data))
    event: SecurityEvent[DataT] = envelope(
        type=type(data).EVENT_TYPE,
        aggregate_id=aggregate_id or uuid.uuid4(),
        version=version,
        account_id=account_id,
        occurred_at=occurred_at,
        recorded_at=occurred_at,
        actor_kind=actor_kind,
        actor_id=actor_id,
        source_ip=source_ip,
        user_agent=user_agent,
        request_id=request_id,
        data=data,
    )
    return event


def attributes_of(
    event: SecurityEvent[Any], *, sequence: int = 1, position: int | None = None
) -> CloudEventAttributes:
    return CloudEventAttributes.for_event(
        event, position=position if position is not None else sequence, account_seq=sequence
    )


def delivery(
    data: DataT,
    *,
    sequence: int = 1,
    position: int | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    **event: Any,
) -> Delivered[DataT]:
    """What a handler is given for ``data`` (the rest as ``security_event`` takes it)."""
    value = security_event(data, **event)
    return Delivered(
        attributes_of(value, sequence=sequence, position=position),
        value,
        topic,
        partition,
        offset,
    )


@dataclass(frozen=True)
class Message:
    """A Kafka message as the relay sends it."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    ce_id: str

    def with_headers(self, changes: Mapping[str, bytes | None]) -> Message:
        """Headers replaced or added (a value of None drops the header)."""
        kept = [(k, v) for k, v in self.headers if k not in changes]
        added = [(k, v) for k, v in changes.items() if v is not None]
        return Message(self.key, self.value, kept + added, self.ce_id)

    def with_value(self, value: bytes) -> Message:
        return Message(self.key, value, self.headers, self.ce_id)


def message(
    data: EventData, *, sequence: int = 1, position: int | None = None, **event: Any
) -> Message:
    value = security_event(data, **event)
    attributes = attributes_of(value, sequence=sequence, position=position)
    return Message(
        attributes.key,
        value.model_dump_json().encode(),
        attributes.to_headers(),
        attributes.id,
    )


def message_of(delivered: Delivered[Any]) -> Message:
    """The Kafka message a delivery was read from."""
    return Message(
        delivered.attributes.key,
        delivered.event.model_dump_json().encode(),
        delivered.attributes.to_headers(),
        delivered.ce_id,
    )


__all__ = ["Message", "attributes_of", "delivery", "message", "message_of", "security_event"]
