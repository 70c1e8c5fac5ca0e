"""The investigator's replay: every event of an account and its users, or of one user, with
what each one changed in the security state.

Events are read from the event store (not from a view) and applied to the aggregates one
by one. Before and after each event the part of the security state document that the
event's aggregate owns is rendered, and the two are diffed into readable lines:
``+ API key ci-deploy (mail.send)``, ``status: active → reset_required``, ...

The account's and its users' events are merged by ``occurred_at`` and then by the time
the library stamped them (trigger order), which keeps each aggregate's own order.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from domain.account import Account, ApiKeyIndex
from domain.catalogue import event_type_name
from domain.errors import (
    DamagedHistoryError,
    InvalidCommandError,
    UnknownAccountError,
    UnknownUserError,
)
from domain.public import public_fields
from domain.reader import LedgerReader
from domain.replay import apply
from domain.user import User
from projections.pointintime import as_utc
from projections.state.document import (
    Document,
    account_record,
    iso,
    public_key_fingerprint,
    render_account,
    render_user,
    user_record,
)

SubjectKind = Literal["account", "user", "api_key"]


class UnknownSubjectError(UnknownAccountError, UnknownUserError):
    """Neither an account nor a user has that name."""


@dataclass(frozen=True)
class HistoryEntry:
    occurred_at: datetime
    recorded_at: datetime
    subject_kind: SubjectKind
    subject: str
    version: int
    type: str
    actor: str
    source_ip: str | None
    user_agent: str | None
    request_id: str
    changes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "occurred_at": iso(self.occurred_at),
            "recorded_at": iso(self.recorded_at),
            "subject_kind": self.subject_kind,
            "subject": self.subject,
            "version": self.version,
            "type": self.type,
            "actor": self.actor,
            "source_ip": self.source_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "changes": list(self.changes),
            "details": dict(self.details),
        }


# --- diffing state documents ---------------------------------------------------------------


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(fmt_value(v) for v in value) or "-"
    return str(value)


def _member(d: dict[str, Any]) -> str:
    return f"member {d['username']} ({d['role']})"


def _api_key(d: dict[str, Any]) -> str:
    return f"API key {d['name']} ({', '.join(d['scopes'])})"


def _allowlist(d: dict[str, Any]) -> str:
    return f"allowlist {d['cidr']} ({d['label']})"


def _dkim(d: dict[str, Any]) -> str:
    return f"DKIM key {d['selector']}._domainkey.{d['domain']} ({d['algorithm']})"


def _factor(d: dict[str, Any]) -> str:
    return f"factor {d['kind']} ({d['label']})"


def _pending(d: dict[str, Any]) -> str:
    return f"pending enrolment {d['kind']} ({d['label']})"


Describe = Callable[[dict[str, Any]], str]

COLLECTIONS: dict[str, tuple[Callable[[dict[str, Any]], str], Describe]] = {
    "members": (lambda d: d["username"], _member),
    "api_keys": (lambda d: d["key_id"], _api_key),
    "revoked_api_keys": (lambda d: d["key_id"], _api_key),
    "allowlist": (lambda d: d["entry_id"], _allowlist),
    "dkim_keys": (lambda d: f"{d['selector']}._domainkey.{d['domain']}", _dkim),
    "second_factors": (lambda d: d["factor_id"], _factor),
    "pending_enrolments": (lambda d: d["factor_id"], _pending),
}

# An item leaving one collection for another is one change, said in one line.
MOVES: dict[tuple[str, str], Callable[[dict[str, Any]], str]] = {
    ("api_keys", "revoked_api_keys"): lambda d: (
        f"- {_api_key(d)} revoked ({d.get('revoke_reason') or 'no reason'})"
    ),
    ("pending_enrolments", "second_factors"): lambda d: f"+ {_factor(d)} confirmed",
}

# Left out of diffs: the age moves with the clock, and status/reset_reason say the rest.
_NOT_DIFFED = frozenset({"password_age_days", "reset_required"})


def _created(kind: SubjectKind, after: Document) -> str:
    if kind == "account":
        a = after["account"]
        return f"+ account {a['name']} ({a['kind']}, {a['display_name']})"
    return f"+ user {after['username']} ({after['role']}, {after['email']})"


def _scalar_lines(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = []
    for key, new in after.items():
        if key in COLLECTIONS or key in _NOT_DIFFED or isinstance(new, (list, dict)):
            continue
        old = before.get(key)
        if old == new:
            continue
        if key == "password_changed_at":
            lines.append("password set" if old is None else "password changed")
        else:
            lines.append(f"{key}: {fmt_value(old)} → {fmt_value(new)}")
    return lines


def _item_change(describe: Describe, old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [k for k in new if old.get(k) != new[k]]
    significant = [k for k in changed if not k.endswith("_at")]
    shown = significant or changed
    parts = ", ".join(f"{k}: {fmt_value(old.get(k))} → {fmt_value(new[k])}" for k in shown)
    return f"~ {describe(new)}: {parts}"


def diff_documents(kind: SubjectKind, before: Document | None, after: Document | None) -> list[str]:
    """Readable lines saying what changed between two renderings of one aggregate's part."""
    if after is None:
        return []
    if before is None:
        return [_created(kind, after)]
    lines: list[str] = []
    if kind == "account":
        lines += _scalar_lines(before["account"], after["account"])
    else:
        lines += _scalar_lines(before, after)

    added: dict[str, dict[str, dict[str, Any]]] = {}
    removed: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (key_of, describe) in COLLECTIONS.items():
        if name not in after:
            continue
        old_items = {key_of(d): d for d in before.get(name, [])}
        new_items = {key_of(d): d for d in after[name]}
        added[name] = {k: d for k, d in new_items.items() if k not in old_items}
        removed[name] = {k: d for k, d in old_items.items() if k not in new_items}
        for k, d in new_items.items():
            if k in old_items and old_items[k] != d:
                lines.append(_item_change(describe, old_items[k], d))

    for (source, target), say in MOVES.items():
        for k in list(removed.get(source, {})):
            if k in added.get(target, {}):
                lines.append(say(added[target].pop(k)))
                del removed[source][k]
    for name, (_, describe) in COLLECTIONS.items():
        lines += [f"+ {describe(d)}" for d in added.get(name, {}).values()]
        lines += [f"- {describe(d)}" for d in removed.get(name, {}).values()]
    return lines


def render_part(kind: SubjectKind, aggregate: Any) -> Document | None:
    """The part of the document one aggregate owns (no password age: it moves with time)."""
    if aggregate is None or kind == "api_key":
        return None
    if kind == "account":
        doc = render_account(account_record(aggregate))
        doc["members"] = sorted(
            ({"username": m.username, "role": m.role} for m in aggregate.members.values()),
            key=lambda m: m["username"],
        )
        return doc
    return render_user(user_record(aggregate), None)


def event_details(event: Any) -> dict[str, Any]:
    """The event's public fields (the catalogue's, JSON-safe); public keys as fingerprints."""
    details: dict[str, Any] = {}
    for key, value in public_fields(event, derived=False).items():
        if key == "public_key" and isinstance(value, str):
            details["public_key_sha256"] = public_key_fingerprint(value)
        else:
            details[key] = value
    return details


# --- replay -------------------------------------------------------------------------------------


def _stream(ledger: LedgerReader, kind: SubjectKind, aggregate_id: uuid.UUID) -> Iterator[Any]:
    for event in ledger.events.get(aggregate_id):
        yield kind, event


# What an ApiKeyIndex event tells, by class: a line from the event, the key's name and
# " from <ip>" (it changes no part of the document). ApiKeyIndex.Indexed tells nothing
# new and is no entry of the history.
KeyUseLine = Callable[[Any, str, str], str]
KEY_USE_LINES: dict[type, KeyUseLine] = {
    ApiKeyIndex.Used: lambda event, name, where: f"API key {name} used{where}",
    ApiKeyIndex.UseRefused: lambda event, name, where: (
        f"API key {name} refused{where}: {event.reason}"
    ),
}
NOT_SHOWN: frozenset[type] = frozenset({ApiKeyIndex.Indexed})
# Events that name an API key, by class: (key id, name), so later lines can use the name.
KEY_NAMES: dict[type, Callable[[Any], tuple[str, str]]] = {
    Account.ApiKeyCreated: lambda event: (event.key_id, event.name),
}


def _key_use_lines(event: Any, key_names: dict[str, str]) -> list[str]:
    line = KEY_USE_LINES.get(type(event))
    if line is None:
        return []
    where = f" from {event.source_ip}" if event.source_ip else ""
    return [line(event, key_names.get(event.key_id, event.key_id), where)]


def replay(
    ledger: LedgerReader,
    subjects: Iterable[tuple[SubjectKind, uuid.UUID]],
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[HistoryEntry]:
    """History entries of the given aggregates' events with since <= occurred_at <= until.

    Events before ``since`` are replayed too (without diffing), so the first entry's
    diff starts from the true state.
    """
    since = as_utc(since) if since else None
    until = as_utc(until) if until else None
    if since and until and since > until:
        raise InvalidCommandError("history", [f"--since {since} is after --until {until}"])
    streams = [_stream(ledger, kind, aggregate_id) for kind, aggregate_id in subjects]
    merged = heapq.merge(*streams, key=lambda pair: (pair[1].occurred_at, pair[1].timestamp))

    aggregates: dict[uuid.UUID, Any] = {}
    parts: dict[uuid.UUID, Document | None] = {}  # rendering of the current aggregate
    entries: list[HistoryEntry] = []
    key_names: dict[str, str] = {}
    try:
        for kind, event in merged:
            if until is not None and event.occurred_at > until:
                break
            key = event.originator_id
            in_window = since is None or event.occurred_at >= since
            if in_window:
                before = parts[key] if key in parts else render_part(kind, aggregates.get(key))
            aggregates[key] = apply(aggregates.get(key), event)
            names = KEY_NAMES.get(type(event))
            if names is not None:
                key_id, name = names(event)
                key_names[key_id] = name
            if not in_window or type(event) in NOT_SHOWN:
                parts.pop(key, None)  # stale: render again when first needed
                continue
            after = render_part(kind, aggregates[key])
            parts[key] = after
            aggregate = aggregates[key]
            if kind == "api_key":
                subject, changes = aggregate.key_id, _key_use_lines(event, key_names)
            else:
                subject = aggregate.name if kind == "account" else aggregate.username
                changes = diff_documents(kind, before, after)
            entries.append(
                HistoryEntry(
                    occurred_at=event.occurred_at,
                    recorded_at=event.timestamp,
                    subject_kind=kind,
                    subject=subject,
                    version=event.originator_version,
                    type=event_type_name(event),
                    actor=f"{event.actor_kind}:{event.actor_id}",
                    source_ip=event.source_ip,
                    user_agent=event.user_agent,
                    request_id=event.request_id,
                    changes=changes,
                    details=event_details(event),
                )
            )
    except DamagedHistoryError as e:
        raise ledger.locate(e) from None
    return entries


def _exists(ledger: LedgerReader, aggregate_id: uuid.UUID, cls: type) -> bool:
    for event in ledger.events.get(aggregate_id, limit=1):
        return isinstance(event, cls)
    return False


def account_history(
    ledger: LedgerReader, name: str, since: datetime | None = None, until: datetime | None = None
) -> list[HistoryEntry]:
    """Events of the account and of every user who is (now) its member."""
    account = ledger.get_account(name)
    subjects: list[tuple[SubjectKind, uuid.UUID]] = [("account", account.id)]
    subjects += [("user", uuid.UUID(user_id)) for user_id in account.members]
    # Where and when its API keys were used or refused (ApiKeyIndex.Indexed says nothing new).
    subjects += [("api_key", ApiKeyIndex.create_id(key_id)) for key_id in account.api_keys]
    return replay(ledger, subjects, since, until)


def user_history(
    ledger: LedgerReader,
    username: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[HistoryEntry]:
    user_id = User.create_id(username)
    if not _exists(ledger, user_id, User.Registered):
        raise UnknownUserError(f"no user named {username!r}")
    return replay(ledger, [("user", user_id)], since, until)


def resolve_subject(
    ledger: LedgerReader, ref: str, force: SubjectKind | None = None
) -> tuple[SubjectKind, str]:
    """An account if one has that name, else a user; ``force`` picks one kind only."""
    if force in (None, "account") and _exists(ledger, Account.create_id(ref), Account.Opened):
        return "account", ref
    if force in (None, "user") and _exists(ledger, User.create_id(ref), User.Registered):
        return "user", ref
    if force == "account":
        raise UnknownAccountError(f"no account named {ref!r}")
    if force == "user":
        raise UnknownUserError(f"no user named {ref!r}")
    raise UnknownSubjectError(f"no account or user named {ref!r}")


def history(
    ledger: LedgerReader,
    ref: str,
    since: datetime | None = None,
    until: datetime | None = None,
    force: SubjectKind | None = None,
) -> tuple[SubjectKind, list[HistoryEntry]]:
    kind, name = resolve_subject(ledger, ref, force)
    if kind == "account":
        return kind, account_history(ledger, name, since, until)
    return kind, user_history(ledger, name, since, until)
