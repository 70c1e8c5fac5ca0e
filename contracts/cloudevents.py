"""The CloudEvents 1.0 attributes of a published message (Kafka protocol binding,
binary content mode).

The value is the event (``contracts.envelope.SecurityEvent``) as JSON; every attribute is
a Kafka header, its name ``ce_`` + the attribute's, its value UTF-8 text:

============================  ===========================================================
``ce_specversion``            ``1.0``
``ce_id``                     ``<aggregate id>:<version>``: unique, the same on every
                              re-publish of the event (deduplicate on it)
``ce_source``                 the publishing ledger, a URI reference
``ce_type``                   ``io.secstate.<family>.<event>.v<N>`` (payload model version)
``ce_time``                   when it happened (domain time), RFC 3339, UTC
``ce_subject``                ``<family>/<aggregate id>``, e.g. ``user/6f1f...``
``content-type``              ``application/json`` (the ``datacontenttype`` attribute)
``ce_logposition``            the event's position in the ledger's global log (decimal)
``ce_accountseq``             the account's sequence number: 1, 2, 3, ... over all of an
                              account's events, whichever aggregate recorded them; a gap
                              is a lost message, a repeat a duplicate (decimal)
``ce_recordedtime``           when the ledger recorded it, RFC 3339, UTC
``ce_partitionkey``           the account id (the aggregate id when the event belongs to
                              no account); also the Kafka message key
============================  ===========================================================

Extension names are lower-case letters and digits only, as CloudEvents requires;
``partitionkey`` is the Partitioning extension's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts.envelope import SecurityEvent
from contracts.payloads import family_of

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
DEFAULT_SOURCE = "urn:secstate:ledger"
HEADER_PREFIX = "ce_"

# Attribute names: the CloudEvents context attributes secstate sets, then its extensions.
SPECVERSION = "specversion"
ID = "id"
SOURCE = "source"
TYPE = "type"
TIME = "time"
SUBJECT = "subject"
DATACONTENTTYPE = "datacontenttype"
LOGPOSITION = "logposition"
ACCOUNTSEQ = "accountseq"
RECORDEDTIME = "recordedtime"
PARTITIONKEY = "partitionkey"
EXTENSIONS = (LOGPOSITION, ACCOUNTSEQ, RECORDEDTIME, PARTITIONKEY)

# Kafka header names (binary mode): ``ce_`` + the attribute, but ``content-type``.
HEADER_SPECVERSION = "ce_specversion"
HEADER_ID = "ce_id"
HEADER_SOURCE = "ce_source"
HEADER_TYPE = "ce_type"
HEADER_TIME = "ce_time"
HEADER_SUBJECT = "ce_subject"
HEADER_CONTENT_TYPE = "content-type"
HEADER_LOGPOSITION = "ce_logposition"
HEADER_ACCOUNTSEQ = "ce_accountseq"
HEADER_RECORDEDTIME = "ce_recordedtime"
HEADER_PARTITIONKEY = "ce_partitionkey"

# attribute -> header, in the order the relay writes them; every one is required
HEADERS: dict[str, str] = {
    SPECVERSION: HEADER_SPECVERSION,
    ID: HEADER_ID,
    SOURCE: HEADER_SOURCE,
    TYPE: HEADER_TYPE,
    TIME: HEADER_TIME,
    SUBJECT: HEADER_SUBJECT,
    DATACONTENTTYPE: HEADER_CONTENT_TYPE,
    LOGPOSITION: HEADER_LOGPOSITION,
    ACCOUNTSEQ: HEADER_ACCOUNTSEQ,
    RECORDEDTIME: HEADER_RECORDEDTIME,
    PARTITIONKEY: HEADER_PARTITIONKEY,
}
REQUIRED_HEADERS: tuple[str, ...] = tuple(HEADERS.values())
_ATTRIBUTE_OF_HEADER = {header: attribute for attribute, header in HEADERS.items()}

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ID_PATTERN = rf"^{_UUID}:[1-9][0-9]*$"
TYPE_PATTERN = r"^io\.secstate\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.v[1-9][0-9]*$"
SUBJECT_PATTERN = rf"^[a-z][a-z0-9_]*/{_UUID}$"
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")


def event_id(aggregate_id: UUID, version: int) -> str:
    """``ce_id``: the aggregate id and version, the same on every re-publish."""
    return f"{aggregate_id}:{version}"


def subject_for(event_type: str, aggregate_id: UUID) -> str:
    """``ce_subject``: ``user/<id>`` for ``User.*`` events, ``api_key_index/<id>``, ..."""
    return f"{family_of(event_type)}/{aggregate_id}"


def rfc3339(moment: datetime) -> str:
    """A timezone-aware time as RFC 3339 in UTC, ``2015-03-01T10:00:00.123456Z``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}; expected UTC")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def partition_key(account_id: UUID | None, aggregate_id: UUID) -> str:
    """The account id, or the aggregate id of an event that belongs to no account."""
    return str(account_id if account_id is not None else aggregate_id)


class HeaderError(ValueError):
    """A message's CloudEvents headers are missing one, or hold an invalid value.

    ``header`` names the first that is wrong; ``reason`` is for a dead-letter header.
    """

    reason = "headers_invalid"

    def __init__(self, message: str, header: str | None = None) -> None:
        super().__init__(message)
        self.header = header


Text = Annotated[str, StringConstraints(min_length=1)]


class CloudEventAttributes(BaseModel):
    """The CloudEvents attributes of one message, typed; built from the event by the relay
    (``for_event``, then ``to_headers``) and read from the headers by a consumer
    (``from_headers``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(pattern=ID_PATTERN)]
    source: Text
    type: Annotated[str, StringConstraints(pattern=TYPE_PATTERN)]
    time: AwareDatetime
    subject: Annotated[str, StringConstraints(pattern=SUBJECT_PATTERN)]
    datacontenttype: Literal["application/json"]
    logposition: Annotated[int, Field(ge=1)]
    accountseq: Annotated[int, Field(ge=1)]
    recordedtime: AwareDatetime
    partitionkey: UUID

    @field_validator(LOGPOSITION, ACCOUNTSEQ, mode="before")
    @classmethod
    def _decimal_text_only(cls, value: Any) -> Any:
        # "+5", " 5", "5_000" and "05" are ints to Python but not decimal text
        if isinstance(value, str) and not _DECIMAL.match(value):
            raise ValueError(f"must be decimal digits, got {value[:40]!r}")
        return value

    @model_validator(mode="after")
    def _subject_is_the_ids(self) -> Self:
        family, _, aggregate = self.subject.partition("/")
        if aggregate != self.id.partition(":")[0]:
            raise ValueError("subject and id name different aggregates")
        if self.type.split(".")[2] != family:
            raise ValueError(f"subject is of family {family!r}, the type {self.type!r} is not")
        return self

    @property
    def aggregate_id(self) -> UUID:
        return UUID(self.id.partition(":")[0])

    @property
    def version(self) -> int:
        return int(self.id.partition(":")[2])

    @property
    def key(self) -> bytes:
        """The Kafka message key: the partition key as text."""
        return str(self.partitionkey).encode()

    @classmethod
    def for_event(
        cls,
        event: SecurityEvent[Any],
        *,
        position: int,
        account_seq: int,
        source: str = DEFAULT_SOURCE,
    ) -> CloudEventAttributes:
        """The attributes of a published event at ``position`` of the log, the
        ``account_seq``-th event of its account."""
        return cls(
            specversion=SPEC_VERSION,
            id=event_id(event.aggregate_id, event.version),
            source=source,
            type=type(event.data).CE_TYPE,
            time=event.occurred_at,
            subject=subject_for(event.type, event.aggregate_id),
            datacontenttype=CONTENT_TYPE,
            logposition=position,
            accountseq=account_seq,
            recordedtime=event.recorded_at,
            partitionkey=UUID(partition_key(event.account_id, event.aggregate_id)),
        )

    def to_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers, in a fixed order, values UTF-8 text."""
        values: dict[str, str] = {
            SPECVERSION: self.specversion,
            ID: self.id,
            SOURCE: self.source,
            TYPE: self.type,
            TIME: rfc3339(self.time),
            SUBJECT: self.subject,
            DATACONTENTTYPE: self.datacontenttype,
            LOGPOSITION: str(self.logposition),
            ACCOUNTSEQ: str(self.accountseq),
            RECORDEDTIME: rfc3339(self.recordedtime),
            PARTITIONKEY: str(self.partitionkey),
        }
        return [(HEADERS[name], values[name].encode()) for name in HEADERS]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]]) -> CloudEventAttributes:
        """The attributes in a message's headers; HeaderError names a missing one, one given
        twice, one that is not UTF-8, or one whose value is invalid. Other headers (tracing,
        dead-letter notes) are ignored."""
        found: dict[str, str] = {}
        for name, raw in headers:
            attribute = _ATTRIBUTE_OF_HEADER.get(name)
            if attribute is None:
                continue
            if attribute in found:
                raise HeaderError(f"CloudEvents header {name} is given twice", name)
            if raw is None:
                raise HeaderError(f"CloudEvents header {name} has no value", name)
            try:
                found[attribute] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise HeaderError(f"CloudEvents header {name} is not UTF-8 text", name) from None
        missing = [HEADERS[a] for a in HEADERS if a not in found]
        if missing:
            raise HeaderError(f"missing CloudEvents header(s): {', '.join(missing)}", missing[0])
        try:
            return cls.model_validate(found)
        except ValidationError as e:
            raise _header_error(e) from None


def _header_error(error: ValidationError) -> HeaderError:
    problems: list[str] = []
    first: str | None = None
    for err in error.errors(include_url=False):
        loc = err["loc"]
        attribute = str(loc[0]) if loc else None
        header = HEADERS.get(attribute or "")
        first = first or header
        where = f"CloudEvents header {header}" if header else "CloudEvents headers"
        problems.append(f"{where}: {err['msg']}")
    return HeaderError("; ".join(problems), first)


__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_SOURCE",
    "EXTENSIONS",
    "HEADERS",
    "REQUIRED_HEADERS",
    "SPEC_VERSION",
    "CloudEventAttributes",
    "HeaderError",
    "event_id",
    "partition_key",
    "rfc3339",
    "subject_for",
]
