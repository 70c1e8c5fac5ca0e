"""secstate's published contracts: what a downstream service reads off Kafka.

* ``contracts.payloads``: one versioned pydantic model per event type (the event's
  public fields), e.g. ``PasswordChanged`` for ``io.secstate.user.password_changed.v1``;
* ``contracts.envelope``: ``SecurityEvent[Model]``, the whole message value;
* ``contracts.cloudevents``: the CloudEvents 1.0 headers (Kafka binary mode) and
  ``CloudEventAttributes``, which reads them;
* ``contracts.registry``: models by type; ``parse_value`` and ``parse_message`` (a
  consumer's), ``validate_value`` (the relay's), with named errors;
* ``contracts.schemas``: the JSON Schemas and AsyncAPI document of ``docs/``
  (``python -m contracts.schemas``).

It depends on pydantic and the standard library only, nothing else of secstate's.
"""

from contracts.cloudevents import CloudEventAttributes, HeaderError
from contracts.envelope import SecurityEvent
from contracts.payloads import MODELS, EventData
from contracts.registry import (
    ContractError,
    HeadersMismatch,
    Message,
    PayloadInvalid,
    UnknownEventType,
    UnknownVersion,
    envelope_for,
    model_for_ce_type,
    model_for_event_type,
    parse_message,
    parse_value,
    validate_value,
)

__all__ = [
    "MODELS",
    "CloudEventAttributes",
    "ContractError",
    "EventData",
    "HeaderError",
    "HeadersMismatch",
    "Message",
    "PayloadInvalid",
    "SecurityEvent",
    "UnknownEventType",
    "UnknownVersion",
    "envelope_for",
    "model_for_ce_type",
    "model_for_event_type",
    "parse_message",
    "parse_value",
    "validate_value",
]
