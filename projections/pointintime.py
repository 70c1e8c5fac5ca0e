"""Security state at a past moment, replayed from the event store (not from any view).

``state_at(ledger, account, at)`` replays the Account aggregate to its last version whose
``occurred_at <= at``, then each of its members at that moment likewise, and renders the
same document as the current-state view.

Finding "the last version with occurred_at <= at" assumes ``occurred_at`` never decreases
along one aggregate's versions. The ledger stamps each command attempt with its clock
after loading the aggregate and retries conflicts with a fresh stamp, so this holds as
long as the clock does not step backwards between two commands on the same aggregate
(a wall clock set back, or a demo clock moved to an earlier time). If it does not hold,
the replay stops at the first event after ``at`` inside the final range it scans.

Cost: one query for the aggregate's last event; if that is after ``at``, a binary search
over the versions that are multiples of the snapshot interval (where the ledger keeps
snapshots), one ``repository.get(id, version=...)`` that starts from that snapshot, and
reads of the events after that snapshot in pages of growing size, applied until the first
one after ``at``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from domain.account import Account, ApiKeyIndex
from domain.errors import DamagedHistoryError, SecStateError, UnknownAccountError
from domain.reader import LedgerReader
from domain.replay import apply, replay
from domain.user import User
from projections.state import Document, state_from_aggregates

DEFAULT_INTERVAL = 100
FIRST_PAGE = 16


class BeforeAccountExistedError(SecStateError):
    """The moment asked for is before the account was opened."""


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken to be UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _interval(ledger: LedgerReader, cls: type) -> int:
    value = ledger.snapshotting_intervals.get(cls)
    return int(value) if value else DEFAULT_INTERVAL


def _event_at(ledger: LedgerReader, aggregate_id: uuid.UUID, version: int) -> Any:
    for event in ledger.events.get(aggregate_id, gt=version - 1, lte=version, limit=1):
        if event.originator_version == version:
            return event
    raise DamagedHistoryError(
        f"version {version} is missing although later versions exist",
        originator_id=aggregate_id,
        originator_version=version,
        topic=None,
    )


def replay_until(ledger: LedgerReader, aggregate_id: uuid.UUID, at: datetime, interval: int) -> Any:
    """The aggregate as of its last event with ``occurred_at <= at``; None if none is."""
    at = as_utc(at)
    last: Any = next(iter(ledger.events.get(aggregate_id, desc=True, limit=1)), None)
    if last is None:
        return None
    if last.occurred_at <= at:
        return ledger.repository.get(aggregate_id, projector_func=replay)
    latest = int(last.originator_version)

    # Largest k with occurred_at(k * interval) <= at, k = 0 meaning "before version 1".
    lo, hi = 0, (latest - 1) // interval
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _event_at(ledger, aggregate_id, mid * interval).occurred_at <= at:
            lo = mid
        else:
            hi = mid - 1
    base = lo * interval

    aggregate = (
        ledger.repository.get(aggregate_id, version=base, projector_func=replay) if base else None
    )
    # Read on from the base in growing pages: the recorder fetches whole ranges, and
    # the boundary is often near the start, so one big range would mostly be wasted.
    gt, upper, page = base, min(base + interval, latest), FIRST_PAGE
    while gt < upper:
        lte = min(gt + page, upper)
        events: Iterable[Any] = ledger.events.get(aggregate_id, gt=gt, lte=lte)
        for event in events:
            if event.occurred_at > at:
                return aggregate
            aggregate = apply(aggregate, event)
        gt, page = lte, page * 2
    return aggregate


def account_at(ledger: LedgerReader, account_name: str, at: datetime) -> Account:
    """The Account aggregate as it was at ``at``; clear errors if unknown or not yet opened."""
    at = as_utc(at)
    account_id = Account.create_id(account_name)
    first = next(iter(ledger.events.get(account_id, limit=1)), None)
    if first is None or not isinstance(first, Account.Opened):
        raise UnknownAccountError(f"no account named {account_name!r}")
    if first.occurred_at > at:
        raise BeforeAccountExistedError(
            f"account {account_name!r} did not exist at {at.isoformat()}: it was opened at "
            f"{first.occurred_at.astimezone(UTC).isoformat()}"
        )
    account = replay_until(ledger, account_id, at, _interval(ledger, Account))
    if not isinstance(account, Account):
        raise DamagedHistoryError(
            f"the account replays to a {type(account).__name__}, not an Account",
            originator_id=account_id,
            originator_version=None,
            topic=None,
        )
    return account


def users_at(ledger: LedgerReader, account: Account, at: datetime) -> list[User]:
    """The account's members as they were at ``at`` (the account already replayed to ``at``)."""
    interval = _interval(ledger, User)
    users = []
    for user_id in account.members:
        user = replay_until(ledger, uuid.UUID(user_id), at, interval)
        if user is not None:  # only if the clock stepped back between the two aggregates
            users.append(user)
    return users


def key_indexes_at(ledger: LedgerReader, account: Account, at: datetime) -> list[ApiKeyIndex]:
    """The ApiKeyIndex aggregates of the account's keys as they were at ``at``."""
    interval = _interval(ledger, ApiKeyIndex)
    found = []
    for key_id in account.api_keys:
        index = replay_until(ledger, ApiKeyIndex.create_id(key_id), at, interval)
        if isinstance(index, ApiKeyIndex):
            found.append(index)
    return found


def state_at(ledger: LedgerReader, account_name: str, at: datetime) -> Document:
    """The security state document of ``account_name`` as it was at ``at`` (naive = UTC)."""
    at = as_utc(at)
    try:
        account = account_at(ledger, account_name, at)
        users = users_at(ledger, account, at)
        keys = key_indexes_at(ledger, account, at)
    except DamagedHistoryError as e:
        raise ledger.locate(e) from None
    return state_from_aggregates(account, users, at, keys)
