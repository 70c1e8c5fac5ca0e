"""Bulk password-reset campaigns: many users marked reset-required, many events a save.

A campaign works out each user's version and reset status from one consistent read of
the log (the storage port's ``reset_scan``: the User rows' ids and versions, and the
state of reset events only), then stores its marks in batches of ``bulk_batch_size``
users, one transaction each, the batch's identical event state encoded once. It can be
run again: users the campaign already marked are skipped; a batch that meets a
concurrent change is redone on loaded users.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Collection, Container, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from eventsourcing.persistence import IntegrityError, JSONTranscoder, Mapper, StoredEvent

from domain import commands as cmd
from domain.account import Account
from domain.context import RequestContext, Stamp
from domain.ports import LogStore, ResetRow
from domain.user import ResetStatus, User

T = TypeVar("T")


class CampaignLedger(Protocol):
    """What a campaign needs of the ledger it runs on (``domain.ledger.Ledger``)."""

    bulk_batch_size: int
    log_store: LogStore
    mapper: Mapper[uuid.UUID]

    def _check_actor(self, ctx: RequestContext) -> None: ...
    def _retrying(self, attempt: Callable[[], T]) -> T: ...
    def _get_user_by_id(self, user_id: uuid.UUID) -> User: ...
    def stamp(self, ctx: RequestContext) -> Stamp: ...
    def save(self, *objs: Any, **kwargs: Any) -> Any: ...
    def get_account(self, name: str) -> Account: ...
    def get_user(self, username: str) -> User: ...


@dataclass(frozen=True)
class BulkResult:
    targeted: int
    marked: int
    already_marked: int
    batches: int


ProgressCallback = Callable[[int, int], None]

# Bulk commands rebuild their targets from one read of the log rather than a get each
# once there is a target per this many events in the log. Measured with 20,000 targets
# in a log of 1.06M events: a get each costs ~160 us a target on SQLite, ~400 us on
# PostgreSQL (with the save); the read ~0.55 us an event of the log on either, and
# storing the marks directly ~30 us a target. Break-even: ~250 (SQLite) to ~600
# (PostgreSQL) events per target; see docs/benchmarks.md.
_EVENTS_PER_GET = 200
_NO_RESET = ResetStatus()
_COLUMNS = ("originator_id", "originator_version")  # of an event, stored outside its state
_NO_ID = uuid.UUID(int=0)  # for decoding a state shared by many users' events
# Distinct reset-event states (and steps of the reset status) a campaign's read of the
# log remembers: a campaign's batch stores one state.
_DECODED_STATES_MAX = 4096


def user_topics() -> list[str]:
    """The topics of every stored User event class."""
    return sorted(
        v.TOPIC
        for v in vars(User).values()
        if isinstance(v, type) and issubclass(v, User.Event) and v is not User.Event
    )


class ResetCampaign:
    """One run of a bulk reset campaign on a ledger."""

    def __init__(self, ledger: CampaignLedger) -> None:
        self.ledger = ledger

    def require_password_resets(
        self,
        c: cmd.RequirePasswordResets,
        ctx: RequestContext,
        progress: ProgressCallback | None = None,
    ) -> BulkResult:
        """Mark many users reset-required; many events per save, in batches.

        Idempotent per campaign: users the campaign already marked are skipped, so an
        interrupted run can simply be run again.
        """
        self.ledger._check_actor(ctx)
        targets: list[uuid.UUID] | None = None
        if not c.everyone:
            ids: dict[uuid.UUID, None] = {}
            for name in c.accounts:
                for member in self.ledger.get_account(name).members.values():
                    ids[uuid.UUID(member.user_id)] = None
            for username in c.usernames:
                ids[self.ledger.get_user(username).id] = None
            targets = list(ids)
        stamp = self.ledger.stamp(ctx)
        # A get costs two queries and a replay; the scan reads every event of the log but
        # decodes only reset events. With a target per _EVENTS_PER_GET events or more, the
        # scan is the cheaper.
        few = targets is not None and (
            len(targets) * _EVENTS_PER_GET < (self.ledger.log_store.head())
        )
        statuses = (
            {} if few else self._reset_statuses(only=None if targets is None else set(targets))
        )
        order = targets if targets is not None else list(statuses)
        marked = batches = 0
        total = len(order)
        for start in range(0, total, self.ledger.bulk_batch_size):
            batch = order[start : start + self.ledger.bulk_batch_size]
            if few:
                marked += self.ledger._retrying(
                    functools.partial(self._mark_loaded, batch, c, stamp)
                )
            else:
                marked += self._mark_folded(batch, statuses, c, stamp)
            batches += 1
            if progress:
                progress(min(start + len(batch), total), total)
        return BulkResult(
            targeted=total, marked=marked, already_marked=total - marked, batches=batches
        )

    def _reset_statuses(
        self, only: Collection[uuid.UUID] | None
    ) -> dict[uuid.UUID, tuple[int, ResetStatus]]:
        """Each user's (version, ResetStatus) from one read of the log, in registration
        order, decoding only reset events: what a campaign needs, without loading users."""
        rows = self._user_rows()
        if rows is None:
            return self._reset_statuses_by_notifications(only)
        wanted: dict[Any, uuid.UUID] | None = None
        if only is not None:
            # Ids as the rows hold them (SQLite: hex; PostgreSQL: text), so that only
            # the targets' ids are parsed, and only once.
            wanted = {self.ledger.log_store.id_text(u): u for u in only}
        reset_of = self._reset_reader()
        versions: dict[str, int] = {}
        statuses: dict[str, ResetStatus] = {}
        # Users with the same reset history share one status object, so a step from a
        # status by a reset is worked out once: keyed by the status's id (the entry
        # holds the status, so the id is not reused while it is there).
        steps: dict[tuple[int, bool, str | None], tuple[ResetStatus, ResetStatus]] = {}
        for row_id, version, topic, state in rows:
            if wanted is not None and row_id not in wanted:
                continue
            versions[row_id] = version
            if state is not None:
                required, campaign_id = reset_of(topic, bytes(state))
                status = statuses.get(row_id, _NO_RESET)
                key = (id(status), required, campaign_id)
                step = steps.get(key)
                if step is None:
                    if len(steps) >= _DECODED_STATES_MAX:
                        steps.clear()
                    step = steps[key] = (status, status.after_reset(required, campaign_id))
                statuses[row_id] = step[1]
        return {
            (uuid.UUID(row_id) if wanted is None else wanted[row_id]): (
                version,
                statuses.get(row_id, _NO_RESET),
            )
            for row_id, version in versions.items()
        }

    def _user_rows(self) -> Sequence[ResetRow] | None:
        """Every User event's (originator id as text, version, topic, state), in log
        order, from one read of the store (so one consistent read), with the state of
        reset events only: what a campaign needs, without the library's
        select_notifications, which reads every column and makes a UUID and a
        Notification of each row. None where the store cannot (then notifications)."""
        resets = [User.PasswordResetRequired.TOPIC, User.PasswordResetCompleted.TOPIC]
        return self.ledger.log_store.reset_scan(user_topics(), resets)

    def _reset_reader(self) -> Callable[[str, bytes], tuple[bool, str | None]]:
        """(required, campaign id) of a stored reset event: what ResetStatus needs.

        Worked out once per distinct (topic, state), as a campaign's batch stores one
        state. Other reset events (saved one by one, each with its own timestamp) have
        states of their own: where the state is plain JSON (no cipher, no compression,
        no upcasting), only the campaign id is read from it, ~5x cheaper than decoding
        the whole event; otherwise the event is decoded.
        """
        required_topic = User.PasswordResetRequired.TOPIC
        mapper = self.ledger.mapper
        plain = (
            mapper.cipher is None
            and mapper.compressor is None
            and type(mapper.transcoder) is JSONTranscoder
            and getattr(User.PasswordResetRequired, "class_version", 1) == 1
        )
        read: dict[tuple[str, bytes], tuple[bool, str | None]] = {}

        def reset_of(topic: str, state: bytes) -> tuple[bool, str | None]:
            key = (topic, state)
            found = read.get(key)
            if found is None:
                if len(read) >= _DECODED_STATES_MAX:
                    read.clear()
                if topic != required_topic:
                    found = (False, None)
                elif plain:
                    found = (True, json.loads(state)["campaign_id"])
                else:
                    stored = StoredEvent(
                        originator_id=_NO_ID, originator_version=0, topic=topic, state=state
                    )
                    found = (True, mapper.to_domain_event(stored).campaign_id)  # type: ignore[attr-defined]
                read[key] = found
            return found

        return reset_of

    def _reset_statuses_by_notifications(
        self, only: Container[uuid.UUID] | None
    ) -> dict[uuid.UUID, tuple[int, ResetStatus]]:
        """_reset_statuses through the store's plain scan (stores without a reset scan)."""
        decode = {User.PasswordResetRequired.TOPIC, User.PasswordResetCompleted.TOPIC}
        mapper = self.ledger.mapper
        found: dict[Any, tuple[int, ResetStatus]] = {}
        for rows in self.ledger.log_store.scan(topics=user_topics()):
            for row in rows:
                user_id = row.originator_id
                if not isinstance(user_id, uuid.UUID):
                    user_id = uuid.UUID(str(user_id))
                if only is not None and user_id not in only:
                    continue
                _, status = found.get(user_id, (0, _NO_RESET))
                if row.topic in decode:
                    stored = StoredEvent(user_id, row.originator_version, row.topic, row.state)
                    status = status.after(mapper.to_domain_event(stored))
                found[user_id] = (row.originator_version, status)
        return found

    def _mark_folded(
        self,
        batch: list[uuid.UUID],
        statuses: dict[uuid.UUID, tuple[int, ResetStatus]],
        c: cmd.RequirePasswordResets,
        stamp: Stamp,
    ) -> int:
        events = User.reset_required_events(
            ((user_id, *statuses[user_id]) for user_id in batch), c.reason, c.campaign_id, stamp
        )
        try:
            self._record_events(events)
        except IntegrityError:
            # Someone changed one of these users since the scan: redo the batch on loaded users.
            return self.ledger._retrying(lambda: self._mark_loaded(batch, c, stamp))
        return len(events)

    def _mark_loaded(
        self, batch: list[uuid.UUID], c: cmd.RequirePasswordResets, stamp: Stamp
    ) -> int:
        users = [self.ledger._get_user_by_id(i) for i in batch]
        changed = [u for u in users if u.require_password_reset(c.reason, c.campaign_id, stamp)]
        if changed:
            self.ledger.save(*changed)
        return len(changed)

    def _record_events(self, events: list[Any]) -> None:
        """Store events built without their aggregates in one transaction.

        Not through save(), which re-checks each event against the library's runtime
        protocol (~25 us an event), nor the event store's put(), which encodes each:
        events whose state (all but originator id and version) is equal share one
        encoding, e.g. a campaign batch's. Nothing is notified: the Ledger has no
        _notify of its own, and snapshots are left to the next save of each user.
        """
        if not events:
            return
        to_stored = self.ledger.mapper.to_stored_event
        if self.ledger.mapper.cipher is not None:  # each encryption has its own nonce
            self._insert([to_stored(e) for e in events])
            return
        # Events whose state holds the very same objects (not merely equal ones: 1 and
        # True are equal, and so are one moment in two time zones) encode the same.
        encoded: dict[tuple[Any, ...], StoredEvent] = {}
        stored_events = []
        for event in events:
            state = vars(event)
            key = (type(event), *(id(v) for k, v in state.items() if k not in _COLUMNS))
            first = encoded.get(key)
            if first is None:
                first = encoded[key] = to_stored(event)
                stored_events.append(first)
            else:
                stored_events.append(
                    StoredEvent(
                        originator_id=state["originator_id"],
                        originator_version=state["originator_version"],
                        topic=first.topic,
                        state=first.state,
                    )
                )
        self._insert(stored_events)

    def _insert(self, stored_events: list[StoredEvent]) -> None:
        self.ledger.log_store.insert(stored_events)
