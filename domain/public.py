"""The public form of an event: what may leave the ledger (timeline, history, the relay).

Built from the catalogue alone: only fields it lists as public, plus the public facts it
derives from a secret (how many recovery codes). No hash, no sealed value, no ciphertext.
Values are JSON-safe: ids as text, times as UTC ISO 8601.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from domain.catalogue import catalogue_entry


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC; a naive time is refused (every stored time is timezone-aware)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}; expected UTC")
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def json_safe(value: Any) -> Any:
    """A value as JSON holds it: UUIDs as text, times as UTC ISO 8601, lists item by item."""
    if value is None or type(value) in (str, int, bool, float):
        return value
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not a public event value")


def public_fields(event: Any, *, derived: bool = True) -> dict[str, Any]:
    """The event's own public fields (and, with ``derived``, the public facts of its secret
    fields), JSON-safe, in the order the event holds them."""
    entry = catalogue_entry(type(event))
    public = frozenset(entry.public)
    data = vars(event)
    out = {key: json_safe(value) for key, value in data.items() if key in public}
    if derived:
        for source, name, derive in entry.derived:
            out[name] = json_safe(derive(data[source]))
    return out


def public_payload(event: Any) -> dict[str, Any]:
    """The whole public event: type, aggregate, version, context, times and public fields."""
    entry = catalogue_entry(type(event))
    return {
        "type": entry.type_name,
        "aggregate_id": str(event.originator_id),
        "version": event.originator_version,
        "occurred_at": utc_iso(event.occurred_at),
        "recorded_at": utc_iso(event.timestamp),
        "actor_kind": event.actor_kind,
        "actor_id": event.actor_id,
        "source_ip": event.source_ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "data": public_fields(event),
    }


__all__ = ["json_safe", "public_fields", "public_payload", "utc_iso"]
