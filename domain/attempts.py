"""Refused checks against principals the ledger does not know: credential stuffing shows
up exactly there, so each attempt is kept, without creating the user or key it named.

Each attempt is an aggregate of its own (a random id, one event): recording one never
waits for or conflicts with another, and nothing has to be loaded first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventsourcing.domain import Aggregate

from domain.context import Stamp
from domain.values import ContextEvent


class CredentialAttempt(Aggregate):
    """One refused attempt to prove a secret for an unknown username or API key id."""

    TOPIC = "secstate.CredentialAttempt"

    class Event(ContextEvent):
        TOPIC = "secstate.CredentialAttempt.Event"

    class UnknownUserRefused(Event, Aggregate.Created):
        """A check (``login``, ``password_change``, ``totp_confirmation``) named no user."""

        TOPIC = "secstate.CredentialAttempt.UnknownUserRefused"
        class_version = 1
        username: str
        check: str

        def apply(self, attempt: CredentialAttempt) -> None:
            attempt.principal = self.username

    class UnknownApiKeyRefused(Event, Aggregate.Created):
        """An API key was presented that is malformed or whose key id no key has.

        ``key_id`` is the public part when the token has the key format (a checksum that
        does not match keeps it); never any of the secret.
        """

        TOPIC = "secstate.CredentialAttempt.UnknownApiKeyRefused"
        class_version = 1
        key_id: str | None
        reason: str

        def apply(self, attempt: CredentialAttempt) -> None:
            attempt.principal = self.key_id

    if TYPE_CHECKING:
        principal: str | None

    @classmethod
    def unknown_user(cls, username: str, check: str, stamp: Stamp) -> CredentialAttempt:
        return cls._create(cls.UnknownUserRefused, username=username, check=check, **stamp.fields())

    @classmethod
    def unknown_api_key(cls, key_id: str | None, reason: str, stamp: Stamp) -> CredentialAttempt:
        return cls._create(cls.UnknownApiKeyRefused, key_id=key_id, reason=reason, **stamp.fields())
