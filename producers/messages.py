"""One stored event as one Kafka message: a CloudEvent 1.0 in binary content mode.

The attributes travel as ``ce_*`` headers (the Kafka protocol binding), the value is the
event's public form (``domain.public.public_payload`` plus the account it belongs to) as
JSON, and the key is the partition key, so each account's events stay in order on one
partition. Nothing secret is in any of it: the public form has no hash, no sealed value
and no ciphertext, by the catalogue's construction.

``ce_id`` is ``<aggregate id>:<version>``: the event's identity, the same on every
re-publish, so a consumer de-duplicates by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from contracts.cloudevents import CONTENT_TYPE, SPEC_VERSION, event_id, rfc3339, subject_for
from contracts.registry import model_for_event_type
from domain.catalogue import catalogue_entry
from domain.public import public_payload
from producers.sequencing import Placement

Headers = list[tuple[str, bytes]]

_SPEC_VERSION = SPEC_VERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()
# One encoder for every message: json.dumps with options makes a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class OutgoingMessage:
    """What the publisher sends: partition key, value and headers, all bytes."""

    key: bytes
    value: bytes
    headers: Headers
    ce_id: str
    position: int


class MessageBuilder:
    """Builds the message of an event, given its position and placement."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self._ce_types: dict[type, bytes] = {}

    def ce_type(self, event: Any) -> bytes:
        """The versioned CloudEvents type of an event's class, from its contract."""
        cls = type(event)
        found = self._ce_types.get(cls)
        if found is None:
            name = catalogue_entry(cls).type_name
            model = model_for_event_type(name)
            if model is None:
                raise LookupError(f"{name} has no payload model in contracts")
            found = self._ce_types[cls] = model.CE_TYPE.encode()
        return found

    def value(self, event: Any, placement: Placement) -> dict[str, Any]:
        """The message value: the public event with the account it belongs to."""
        payload = public_payload(event)
        value = {
            "type": payload.pop("type"),
            "aggregate_id": payload.pop("aggregate_id"),
            "version": payload.pop("version"),
            "account_id": placement.account_id,
        }
        value.update(payload)
        return value

    def build(self, position: int, event: Any, placement: Placement) -> OutgoingMessage:
        value = self.value(event, placement)
        ce_id = event_id(event.originator_id, event.originator_version)
        key = placement.key.encode()
        headers: Headers = [
            ("ce_specversion", _SPEC_VERSION),
            ("ce_id", ce_id.encode()),
            ("ce_source", self.source),
            ("ce_type", self.ce_type(event)),
            ("ce_time", rfc3339(event.occurred_at).encode()),
            ("ce_subject", subject_for(value["type"], event.originator_id).encode()),
            ("content-type", _CONTENT_TYPE),
            ("ce_logposition", str(position).encode()),
            ("ce_accountseq", str(placement.sequence).encode()),
            ("ce_recordedtime", rfc3339(event.timestamp).encode()),
            ("ce_partitionkey", key),
        ]
        return OutgoingMessage(key, _JSON.encode(value).encode(), headers, ce_id, position)
