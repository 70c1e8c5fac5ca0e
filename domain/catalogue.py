"""Every class the ledger stores, by its stable topic: the only topics ever resolved.

Whoever can write the database can write any topic into a row, and the library imports
whatever module a topic names. So stored topics are looked up here, in an explicit table
of our own aggregate and event classes, before anything is imported or decoded; a topic
that is not in it is refused on every read path (commands, replays, followers, the fast
rebuild reader). The same table knows each event's fields and their types, so a row
whose state decodes but does not fit its class is refused too, instead of giving a
silently different answer.

It is also THE catalogue of events for everything else: each event class's stable type
name (``event_type_name``), its public fields, its secret fields (hashed or sealed, never
shown outside the domain), the public facts derived from a secret (how many recovery
codes, never which), and its one-line summary (``domain.summaries``). Views, the
timeline, history and the public-event serialiser (``domain.public``) all ask here.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from types import NoneType, UnionType
from typing import Any

from eventsourcing.domain import Aggregate, CanInitAggregate, Snapshot
from eventsourcing.utils import get_topic

from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.summaries import SUMMARISERS, Summariser, generic_summary
from domain.user import User
from domain.values import ENVELOPE_FIELDS

AGGREGATE_CLASSES: tuple[type[Aggregate], ...] = (Account, User, ApiKeyIndex, CredentialAttempt)
SNAPSHOT_CLASS = Snapshot
SNAPSHOT_TOPIC = get_topic(Snapshot)

# Library fields the mapper supplies from the row's columns, not from the stored state.
_COLUMN_FIELDS = frozenset({"originator_id", "originator_version"})


def event_classes_of(aggregate: type[Aggregate]) -> list[type[Aggregate.Event]]:
    """The stored event classes an aggregate declares: not its ``Event`` base, nor the
    ``Created`` class the library adds to every aggregate (ours name their own)."""
    base: type[Aggregate.Event] = aggregate.Event
    return [
        value
        for name, value in vars(aggregate).items()
        if isinstance(value, type)
        and issubclass(value, base)
        and value is not base
        and not (name == "Created" and "TOPIC" not in vars(value))
    ]


def _build() -> tuple[
    dict[str, type[Aggregate.Event]], dict[str, type[Aggregate]], dict[type, type[Aggregate]]
]:
    events: dict[str, type[Aggregate.Event]] = {}
    aggregates: dict[str, type[Aggregate]] = {}
    owners: dict[type, type[Aggregate]] = {}
    for aggregate in AGGREGATE_CLASSES:
        topic = vars(aggregate).get("TOPIC")
        if not isinstance(topic, str) or topic in aggregates:
            raise TypeError(f"{aggregate.__name__} needs a TOPIC of its own")
        aggregates[topic] = aggregate
        for cls in event_classes_of(aggregate):
            event_topic = vars(cls).get("TOPIC")
            if not isinstance(event_topic, str) or not event_topic.startswith(f"{topic}."):
                raise TypeError(f"{cls.__qualname__} needs a TOPIC under {topic}.")
            if event_topic in events:
                raise TypeError(f"{event_topic} names two classes")
            events[event_topic] = cls
            owners[cls] = aggregate
    return events, aggregates, owners


_EVENTS, _AGGREGATES, _OWNERS = _build()

EVENT_CLASSES: Mapping[str, type[Aggregate.Event]] = _EVENTS
AGGREGATE_TOPICS: Mapping[str, type[Aggregate]] = _AGGREGATES


def event_class(topic: str) -> type | None:
    """The class a stored topic names, if it is one of ours (or the snapshot class)."""
    found = _EVENTS.get(topic)
    if found is not None:
        return found
    return SNAPSHOT_CLASS if topic == SNAPSHOT_TOPIC else None


def aggregate_class(topic: str) -> type[Aggregate] | None:
    return _AGGREGATES.get(topic)


def owner_of(event_cls: type) -> type[Aggregate] | None:
    """The aggregate class whose history an event class belongs to."""
    return _OWNERS.get(event_cls)


# --- shape checks -----------------------------------------------------------------------

Check = Callable[[Any], bool]


def _check_for(hint: Any) -> Check:
    """A predicate for one annotated field type (the few our events use)."""
    if hint is str:
        return lambda v: type(v) is str
    if hint is bool:
        return lambda v: type(v) is bool
    if hint is int:
        return lambda v: type(v) is int
    if hint is datetime:
        return lambda v: isinstance(v, datetime) and v.tzinfo is not None
    if hint is uuid.UUID:
        return lambda v: isinstance(v, uuid.UUID)
    origin = typing.get_origin(hint)
    if origin in (UnionType, typing.Union):
        options = [_check_for(a) for a in typing.get_args(hint) if a is not NoneType]
        nullable = NoneType in typing.get_args(hint)
        return lambda v: (nullable and v is None) or any(check(v) for check in options)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        check_item = _check_for(item)
        return lambda v: type(v) is list and all(check_item(x) for x in v)
    if hint is Any:
        return lambda v: True
    raise TypeError(f"no shape check for field type {hint!r}; add one to domain/catalogue.py")


class EventShape:
    """The stored state an event class must have: exactly these fields, of these types."""

    def __init__(self, cls: type) -> None:
        if not is_dataclass(cls):
            raise TypeError(f"{cls.__qualname__} is not a dataclass event")
        hints = typing.get_type_hints(cls)
        self.all_names = frozenset(f.name for f in fields(cls))
        self.names = self.all_names - _COLUMN_FIELDS
        self.checks = tuple((name, _check_for(hints[name])) for name in sorted(self.names))

    def problem(self, state: dict[str, Any], columns_added: bool = False) -> str | None:
        """What is wrong with a decoded state, if anything (``columns_added``: the
        originator id and version from the row's columns are in it already)."""
        names = self.all_names if columns_added else self.names
        if state.keys() != names:
            missing = sorted(names - state.keys())
            extra = sorted(str(k) for k in state.keys() - names)
            parts = []
            if missing:
                parts.append(f"missing field(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected field(s) {', '.join(repr(e)[:40] for e in extra[:5])}")
            return "; ".join(parts)
        for name, check in self.checks:
            if not check(state[name]):
                return f"field {name} holds {type(state[name]).__name__}, not what the class says"
        return None


_SHAPES: dict[type, EventShape] = {cls: EventShape(cls) for cls in _EVENTS.values()}


def state_problem(cls: type, state: dict[str, Any], columns_added: bool = False) -> str | None:
    """Why a decoded state cannot be an event of ``cls``, or None if it fits.

    For a creation event, the aggregate topic it names must be its own aggregate's; for a
    snapshot, the aggregate topic must be one of ours.
    """
    if cls is SNAPSHOT_CLASS:
        if state.keys() != {"timestamp", "topic", "state"}:
            return "a snapshot must hold exactly timestamp, topic and state"
        topic = state["topic"]
        if type(topic) is not str or aggregate_class(topic) is None:
            return f"snapshot of untrusted aggregate topic {str(topic)[:80]!r}"
        if type(state["state"]) is not dict:
            return "snapshot state is not an object"
        return None
    shape = _SHAPES.get(cls)
    if shape is None:
        return f"{getattr(cls, '__qualname__', cls)!r} is not a stored event class"
    problem = shape.problem(state, columns_added)
    if problem is None and issubclass(cls, CanInitAggregate):
        own_topic = vars(_OWNERS[cls])["TOPIC"]
        if state.get("originator_topic") != own_topic:
            shown = str(state.get("originator_topic"))[:80]
            return f"creation event names aggregate topic {shown!r}, not {own_topic!r}"
    return problem


# --- the event catalogue ------------------------------------------------------------------

TOPIC_PREFIX = "secstate."


def event_type_name(event: object) -> str:
    """``User.PasswordChanged``: the stable topic without ``secstate.``, of a topic, an event
    class or an event; the one type name of the code base (views, CLI, relay)."""
    if isinstance(event, str):
        topic = event
    else:
        cls = event if isinstance(event, type) else type(event)
        topic = getattr(cls, "TOPIC", None) or cls.__qualname__
    return topic.removeprefix(TOPIC_PREFIX)


Derive = Callable[[Any], Any]


@dataclass(frozen=True)
class _Declared:
    public: tuple[str, ...] = ()
    hashed: tuple[str, ...] = ()
    sealed: tuple[str, ...] = ()
    derived: tuple[tuple[str, str, Derive], ...] = ()  # (secret field, public name, derive)


def _d(
    *public: str,
    hashed: tuple[str, ...] = (),
    sealed: tuple[str, ...] = (),
    derived: tuple[tuple[str, str, Derive], ...] = (),
) -> _Declared:
    return _Declared(public, hashed, sealed, derived)


_HASH = ("password_hash",)

# Every event class's own fields (the context envelope aside), each public or secret.
# Secret: a hash (password, API key secret, recovery codes) or a value sealed under the
# key ring (TOTP seed, DKIM private key). A field added to an event class fails the
# catalogue's tests until it is listed here.
_DECLARED: dict[type, _Declared] = {
    Account.Opened: _d("name", "kind", "display_name"),
    Account.TwoFactorPolicyChanged: _d("required"),
    Account.MemberAdded: _d("user_id", "username", "role"),
    Account.AllowlistEntryAdded: _d("entry_id", "cidr", "label"),
    Account.AllowlistEntryRemoved: _d("entry_id", "cidr", "forced"),
    Account.ControlPanelAccessAllowed: _d("ip", "entry_id"),
    Account.ControlPanelAccessDenied: _d("ip"),
    Account.ApiKeyCreated: _d("key_id", "name", "scopes", "display", hashed=("secret_hash",)),
    Account.ApiKeyRevoked: _d("key_id", "reason"),
    Account.DkimKeyGenerated: _d(
        "domain",
        "selector",
        "algorithm",
        "public_key",
        "campaign_id",
        sealed=("sealed_private_key",),
    ),
    Account.DkimKeyPublished: _d("domain", "selector"),
    Account.DkimKeyActivated: _d("domain", "selector"),
    Account.DkimKeyRetired: _d("domain", "selector", "reason"),
    User.Registered: _d("account_id", "username", "email", "role"),
    User.PasswordSet: _d(hashed=_HASH),
    User.PasswordChanged: _d(hashed=_HASH),
    User.PasswordRehashed: _d(hashed=_HASH),
    User.PasswordResetRequired: _d("reason", "campaign_id"),
    User.PasswordResetCompleted: _d("campaign_id", hashed=_HASH),
    User.LoginSucceeded: _d("method", "factor_id", "totp_step"),
    User.LoginFailed: _d("reason", "counts_toward_lockout"),
    User.PasswordChangeFailed: _d("reason", "counts_toward_lockout"),
    User.TotpConfirmationFailed: _d("factor_id", "reason", "counts_toward_lockout"),
    User.UserLocked: _d("failed_logins"),
    User.UserUnlocked: _d(),
    User.UserDisabled: _d("reason"),
    User.UserEnabled: _d(),
    User.TotpEnrolmentStarted: _d("factor_id", "label", sealed=("sealed_seed",)),
    User.TotpEnrolmentConfirmed: _d("factor_id", "totp_step"),
    User.SecondFactorRemoved: _d("factor_id", "kind", "reason"),
    User.RecoveryCodesGenerated: _d(
        hashed=("code_hashes",), derived=(("code_hashes", "code_count", len),)
    ),
    User.RecoveryCodeUsed: _d("index"),
    User.InternalSystemAccessed: _d("system", "resource", "action", "records", "customer_accounts"),
    ApiKeyIndex.Indexed: _d("key_id", "account_id"),
    ApiKeyIndex.Used: _d("key_id", "account_id"),
    ApiKeyIndex.UseRefused: _d("key_id", "account_id", "reason"),
    CredentialAttempt.UnknownUserRefused: _d("username", "check"),
    CredentialAttempt.UnknownApiKeyRefused: _d("key_id", "reason"),
}


@dataclass(frozen=True)
class EventEntry:
    """What the code base knows about one event class, in one place."""

    cls: type
    type_name: str  # ``User.PasswordChanged``
    aggregate: type[Aggregate]
    public: tuple[str, ...]  # the event's own public fields, in declaration order
    secret: tuple[str, ...]  # hashed or sealed: never shown, published or logged
    sealed: tuple[str, ...]  # the secret fields that are ciphertext under the key ring
    derived: tuple[tuple[str, str, Derive], ...]  # public facts of a secret field
    summary: Summariser

    @property
    def family(self) -> str:
        """The aggregate's name: ``User``, ``Account``, ``ApiKeyIndex``, ..."""
        return self.type_name.partition(".")[0]


def _entries() -> dict[type, EventEntry]:
    found: dict[type, EventEntry] = {}
    for cls in _EVENTS.values():
        declared = _DECLARED.get(cls)
        if declared is None:
            continue  # the catalogue's tests name it; catalogue_entry refuses it
        name = event_type_name(cls)
        found[cls] = EventEntry(
            cls=cls,
            type_name=name,
            aggregate=_OWNERS[cls],
            public=declared.public,
            secret=declared.hashed + declared.sealed,
            sealed=declared.sealed,
            derived=declared.derived,
            summary=SUMMARISERS.get(cls) or generic_summary(name),
        )
    return found


CATALOGUE: Mapping[type, EventEntry] = _entries()


def catalogue_entry(cls: type) -> EventEntry:
    """The catalogue's entry for an event class; KeyError names a class it lacks."""
    try:
        return CATALOGUE[cls]
    except KeyError:
        raise KeyError(f"{getattr(cls, '__qualname__', cls)!r} has no catalogue entry") from None


def own_fields(cls: type) -> frozenset[str]:
    """An event class's fields other than the envelope (library bookkeeping, context)."""
    return frozenset(f.name for f in fields(cls)) - ENVELOPE_FIELDS


def secret_fields() -> frozenset[str]:
    """Every field name some event class holds a secret in."""
    return frozenset(name for entry in CATALOGUE.values() for name in entry.secret)


__all__ = [
    "AGGREGATE_CLASSES",
    "AGGREGATE_TOPICS",
    "CATALOGUE",
    "EVENT_CLASSES",
    "SNAPSHOT_TOPIC",
    "TOPIC_PREFIX",
    "EventEntry",
    "EventShape",
    "aggregate_class",
    "catalogue_entry",
    "event_class",
    "event_classes_of",
    "event_type_name",
    "own_fields",
    "owner_of",
    "secret_fields",
    "state_problem",
]
