"""Whose event is it, and which of that account's events: the partition key and the
per-account sequence number every published event carries.

Both are functions of the log alone, so a re-publish (after a crash, or from position 0
into a new topic) carries the same key and the same number, and a consumer that sees
sequence 7 after 5 knows it missed one.

- An account's own events, and API-key index events, name the account directly.
- A user's events belong to the account the user registered in (``User.Registered``
  says so; the relay remembers it).
- A refused attempt against an unknown principal belongs to no account; it is keyed by
  its own aggregate id (it has exactly one event, so its sequence is always 1).

What is known is kept in a ``SequenceBook``: the saved state (read on demand) plus what
the batch in hand added. The relay saves the additions together with its position, in
one transaction, only after the broker acknowledged the batch; a failed batch is
``discard``-ed, so the next attempt numbers the same events the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.errors import SecStateError
from domain.user import User


class UnplaceableEventError(SecStateError):
    """An event whose account the log does not tell (a user whose registration is
    missing before it): the history is damaged, and numbering would be wrong."""

    def __init__(self, index: int, problem: str) -> None:
        self.index = index  # of the event in the batch
        super().__init__(problem)


class SavedSequences(Protocol):
    """Where the relay keeps what it numbered (its own tables, beside its position)."""

    def sequences(self, keys: Iterable[str]) -> Mapping[str, int]:
        """The last sequence number given to each of ``keys`` that has one."""
        ...

    def accounts_of_users(self, user_ids: Iterable[str]) -> Mapping[str, str]:
        """The account of each of ``user_ids`` whose registration was numbered."""
        ...


@dataclass(frozen=True)
class Placement:
    """Where one event goes: its account (None: none), partition key and sequence."""

    account_id: str | None
    key: str
    sequence: int


class SequenceBook:
    """Numbers events per account, in log order, on top of what was saved."""

    def __init__(self, saved: SavedSequences) -> None:
        self.saved = saved
        self.new_sequences: dict[str, int] = {}
        self.new_users: dict[str, str] = {}

    def place_all(self, events: list[Any]) -> list[Placement]:
        """The placement of each event of a batch, in order (saved state read once)."""
        self._preload(events)
        placed = []
        for index, event in enumerate(events):
            try:
                placed.append(self._place(event))
            except LookupError as e:
                raise UnplaceableEventError(index, str(e)) from None
        return placed

    def discard(self) -> None:
        """Forget what the batch in hand added: it was not acknowledged."""
        self.new_sequences.clear()
        self.new_users.clear()

    def committed(self) -> None:
        """What the batch added is saved now; start the next batch from the saved state."""
        self.discard()

    # --- internals ------------------------------------------------------------------------

    def _preload(self, events: list[Any]) -> None:
        users = {
            str(e.originator_id)
            for e in events
            if isinstance(e, User.Event) and not isinstance(e, User.Registered)
        } - set(self.new_users)
        self._known_users = dict(self.saved.accounts_of_users(users)) if users else {}
        self._known_users.update(self.new_users)
        for event in events:
            if isinstance(event, User.Registered):
                self._known_users.setdefault(str(event.originator_id), str(event.account_id))
        keys = {key for key in map(self._key_or_none, events) if key} - set(self.new_sequences)
        self._known_sequences = dict(self.saved.sequences(keys)) if keys else {}
        self._known_sequences.update(self.new_sequences)

    def _key_or_none(self, event: Any) -> str | None:
        """The partition key, or None where ``_place`` will say what is wrong."""
        try:
            return self._key_of(event)[1]
        except LookupError:
            return None

    def _key_of(self, event: Any) -> tuple[str | None, str]:
        """(account id or None, partition key) of an event."""
        if isinstance(event, Account.Event):
            account = str(event.originator_id)
            return account, account
        if isinstance(event, ApiKeyIndex.Event):
            account = str(vars(event)["account_id"])  # every index event names its account
            return account, account
        if isinstance(event, User.Event):
            user = str(event.originator_id)
            if isinstance(event, User.Registered):
                account = str(event.account_id)
            else:
                found = self._known_users.get(user)
                if found is None:
                    raise LookupError(
                        f"user {user} has events but its registration is not in the log "
                        "before them, so its account is unknown"
                    )
                account = found
            return account, account
        if isinstance(event, CredentialAttempt.Event):
            return None, str(event.originator_id)
        raise LookupError(f"{type(event).__qualname__} belongs to no known aggregate")

    def _place(self, event: Any) -> Placement:
        account, key = self._key_of(event)
        if isinstance(event, User.Registered):
            self.new_users[str(event.originator_id)] = str(event.account_id)
        sequence = self._known_sequences.get(key, 0) + 1
        self._known_sequences[key] = sequence
        self.new_sequences[key] = sequence
        return Placement(account, key, sequence)
