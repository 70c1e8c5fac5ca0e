"""The AsyncAPI 3.0 document of the security-event topic, built from the models.

One channel (the topic, ``secstate.security-events`` unless the deployment names
another), keyed by the CloudEvents ``partitionkey``, its messages in CloudEvents binary
mode: the headers of ``contracts.cloudevents`` and, as the value, one message per event
type whose payload is that type's JSON Schema in ``docs/schemas``. Written as YAML by a
small emitter of our own (the runtime needs no YAML library): strings are quoted as JSON
strings, which YAML reads the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from contracts import cloudevents as ce
from contracts.payloads import EventData

ASYNCAPI_VERSION = "3.0.0"
DEFAULT_TOPIC = "secstate.security-events"
CHANNEL = "securityEvents"
OPERATION = "publishSecurityEvents"
HEADERS_SCHEMA = "CloudEventHeaders"
TRAIT = "cloudEventBinary"
KAFKA_BINDING_VERSION = "0.5.0"

_DECIMAL = "^[1-9][0-9]*$"
_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    ce.HEADER_SPECVERSION: {"const": ce.SPEC_VERSION, "description": "CloudEvents version"},
    ce.HEADER_ID: {
        "pattern": ce.ID_PATTERN,
        "description": "<aggregate_id>:<version>: unique per event and the same on every "
        "re-publish; deduplicate on it",
    },
    ce.HEADER_SOURCE: {
        "format": "uri-reference",
        "description": f"the publishing ledger (default {ce.DEFAULT_SOURCE})",
    },
    ce.HEADER_TYPE: {
        "pattern": ce.TYPE_PATTERN,
        "description": "io.secstate.<family>.<event>.v<N>: the event type and the version "
        "of its payload model; the message's name",
    },
    ce.HEADER_TIME: {
        "format": "date-time",
        "description": "when it happened (domain time), RFC 3339 in UTC",
    },
    ce.HEADER_SUBJECT: {
        "pattern": ce.SUBJECT_PATTERN,
        "description": "<family>/<aggregate_id>, e.g. user/<id>",
    },
    ce.HEADER_CONTENT_TYPE: {
        "const": ce.CONTENT_TYPE,
        "description": "the datacontenttype attribute: the value is JSON",
    },
    ce.HEADER_LOGPOSITION: {
        "pattern": _DECIMAL,
        "description": "extension: the event's position in the ledger's global log, decimal",
    },
    ce.HEADER_ACCOUNTSEQ: {
        "pattern": _DECIMAL,
        "description": "extension: the account's sequence number, 1, 2, 3, ... over all of "
        "an account's events whichever aggregate recorded them (for an event of no "
        "account, over its aggregate's); a gap is a lost message, a repeat a duplicate",
    },
    ce.HEADER_RECORDEDTIME: {
        "format": "date-time",
        "description": "extension: when the ledger recorded it, RFC 3339 in UTC",
    },
    ce.HEADER_PARTITIONKEY: {
        "format": "uuid",
        "description": "extension (Partitioning): the account id, or the aggregate id of an "
        "event that belongs to no account; also the message key",
    },
}


def headers_schema() -> dict[str, Any]:
    """The JSON Schema of a message's headers (each value is UTF-8 text)."""
    return {
        "type": "object",
        "required": list(ce.REQUIRED_HEADERS),
        "properties": {
            name: {"type": "string", **_HEADER_SCHEMAS[name]} for name in ce.REQUIRED_HEADERS
        },
    }


def document(payload_refs: Mapping[type[EventData], str]) -> dict[str, Any]:
    """The AsyncAPI document; ``payload_refs``: each model's schema file, relative."""
    messages = {
        model.CE_TYPE: {
            "name": model.CE_TYPE,
            "title": model.EVENT_TYPE,
            "summary": (model.__doc__ or "").strip(),
            "contentType": ce.CONTENT_TYPE,
            "traits": [{"$ref": f"#/components/messageTraits/{TRAIT}"}],
            "payload": {"$ref": ref},
        }
        for model, ref in payload_refs.items()
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "secstate security events",
            "version": "1.0.0",
            "description": "Every event of the secstate ledger, published by its relay as a "
            "CloudEvent (Kafka protocol binding, binary content mode): the attributes in "
            "headers, the event's public payload as the JSON value. No secret, hash or "
            "ciphertext is ever in a message. Per-account order holds within the topic "
            "(the key is the account), and ce_accountseq lets a consumer detect a gap.",
        },
        "defaultContentType": ce.CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The deployment's Kafka bootstrap servers (an example here).",
            }
        },
        "channels": {
            CHANNEL: {
                "address": DEFAULT_TOPIC,
                "title": "Security events",
                "description": f"The topic the relay publishes to: {DEFAULT_TOPIC} by "
                "default, configurable per deployment (the relay's topic setting), so read "
                "this address as the default name. Key: the partitionkey attribute (the "
                "account id), so each account's events are in one partition, in order.",
                "servers": [{"$ref": "#/servers/kafka"}],
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {
                    "kafka": {"topic": DEFAULT_TOPIC, "bindingVersion": KAFKA_BINDING_VERSION}
                },
            }
        },
        "operations": {
            OPERATION: {
                "action": "send",
                "title": "Publish security events",
                "summary": "The relay publishes every event of the ledger's log, in order, "
                "after the broker acknowledged the ones before (at least once; deduplicate "
                "on ce_id).",
                "channel": {"$ref": f"#/channels/{CHANNEL}"},
                "messages": [
                    {"$ref": f"#/channels/{CHANNEL}/messages/{name}"} for name in messages
                ],
            }
        },
        "components": {
            "schemas": {HEADERS_SCHEMA: headers_schema()},
            "messageTraits": {
                TRAIT: {
                    "headers": {"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"},
                    "contentType": ce.CONTENT_TYPE,
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": "string",
                                "format": "uuid",
                                "description": "the partitionkey attribute: the account "
                                "id, or the aggregate id of an event of no account",
                            },
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                }
            },
            "messages": messages,
        },
    }


_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
            return value
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"no YAML form for {type(value).__name__}")


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, dict | list) and item:
                out.append(head)
                out.extend(_lines(item, indent + 2))
            else:
                out.append(f"{head} {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _lines(item, indent + 2)
                out.append(f"{pad}- {nested[0].lstrip()}")
                out.extend(nested[1:])
            else:
                out.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        out.append(pad + _scalar(value))
    return out


def _empty_or_scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(value: Any) -> str:
    return "\n".join(_lines(value, 0)) + "\n"


def render_asyncapi(payload_refs: Mapping[type[EventData], str]) -> str:
    head = (
        "# Generated from contracts/ by `python -m contracts.schemas`; do not edit by hand.\n"
        f"# The channel's address is the default topic name ({DEFAULT_TOPIC}); a\n"
        "# deployment may configure another.\n"
    )
    return head + to_yaml(document(payload_refs))


__all__ = ["ASYNCAPI_VERSION", "DEFAULT_TOPIC", "document", "headers_schema", "render_asyncapi"]
